"""The `gpus_per_replica` and `parallelism` app arguments: what `auto` chooses, and each bad
combination refused at startup with a message that says what to change."""

import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs, ModelSpec, ParallelDegrees, Recipe
from serve_app.deployments import GENERATOR, options

GUIDED = ModelSpec(id="guided", checkpoint="tiny")
UNGUIDED = ModelSpec(id="turbo", checkpoint="tiny", recipe=Recipe(guidance=False, default_guidance=1.0))


@pytest.mark.parametrize(
    ("gpus", "spec", "expected"),
    [
        (1, GUIDED, {"cfg": 1, "ulysses": 1}),
        (2, GUIDED, {"cfg": 2, "ulysses": 1}),
        (8, GUIDED, {"cfg": 2, "ulysses": 4}),
        (4, UNGUIDED, {"cfg": 1, "ulysses": 4}),  # no second pass to give a rank
    ],
)
def test_auto_puts_cfg_first_when_the_model_guides_then_ulysses(gpus, spec, expected):
    assert AppArgs(gpus_per_replica=gpus).degrees(spec).details == expected


def test_explicit_degrees_are_used_as_given():
    args = AppArgs(gpus_per_replica=4, parallelism={"cfg": 1, "ulysses": 2, "ring": 2})
    assert args.degrees(GUIDED).details == {"cfg": 1, "ulysses": 2, "ring": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"gpus_per_replica": 3}, "gpus_per_replica"),
        ({"gpus_per_replica": 4, "parallelism": {"cfg": 2}}, "makes 2 ranks; gpus_per_replica is 4"),
        ({"gpus_per_replica": 8, "parallelism": {"cfg": 1, "ulysses": 5}}, "divide the model's 24 attention heads"),
        ({"gpus_per_replica": 2, "parallelism": {"cfg": 3, "ulysses": 1}}, "cfg"),
        ({"gpus_per_replica": 2, "parallelism": {"ring": 2}, "device": "cpu"}, "ring attention needs"),
        ({"gpus_per_replica": 2, "parallelism": {"cfg": 2, "tensor": 1}}, "tensor"),
    ],
)
def test_a_bad_combination_is_refused_at_startup(args, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs(**args)


def test_ring_is_allowed_on_a_gpu():
    assert AppArgs(gpus_per_replica=2, parallelism=ParallelDegrees(ring=2), device="cuda").parallelism.ring == 2


@pytest.mark.parametrize(("device", "bundle"), [("cuda", {"GPU": 1, "CPU": 4}), ("cpu", {"CPU": 1})])
def test_a_gang_reserves_a_bundle_a_rank_on_one_node_its_own_first(device, bundle):
    generator = options(AppArgs(gpus_per_replica=4, device=device))[GENERATOR]
    assert generator["placement_group_bundles"] == [bundle] * 4
    assert generator["placement_group_strategy"] == "STRICT_PACK"
    # Serve places the replica (rank 0) in the first bundle: its own options are one rank's.
    actor = generator["ray_actor_options"]
    assert {"GPU": actor.get("num_gpus", 0), "CPU": actor["num_cpus"]} == {"GPU": 0, **bundle}


def test_a_one_gpu_replica_has_no_placement_group():
    assert "placement_group_bundles" not in options(AppArgs(device="cuda"))[GENERATOR]


@pytest.mark.parametrize(
    ("degrees", "expected"),
    [
        # 2 passes x 4 exchanges x 30 layers x 13,640 tokens x 3072 x 1/2 kept elsewhere x 2 bytes.
        (ParallelDegrees(ulysses=2), {"ulysses_all_to_all": 10_056_499_200, "ulysses_output_gather": 10_475_520,
                                       "cfg_all_gather": 0}),
        # Each rank's prediction, 48 x 31 x 44 x 80 values, once a step.
        (ParallelDegrees(cfg=2), {"ulysses_all_to_all": 0, "ulysses_output_gather": 0, "cfg_all_gather": 10_475_520}),
        # One pass a rank, the sequence in 4: 4 x 30 x 6,820 x 3072 x 3/4 x 2.
        (ParallelDegrees(cfg=2, ulysses=4), {"ulysses_all_to_all": 3_771_187_200, "ulysses_output_gather": 7_856_640,
                                              "cfg_all_gather": 10_475_520}),
    ],
)  # fmt: skip
@pytest.mark.slow  # imports diffusers and counts on the full-size transformer's config: seconds
def test_the_bytes_a_rank_sends_per_step_at_1280x704x121(degrees, expected):
    from serve_app.engine.full_size import TRANSFORMER_CONFIG
    from serve_app.engine.parallel import bytes_per_step

    assert bytes_per_step(TRANSFORMER_CONFIG, 1280, 704, 121, degrees) == expected

"""The job mix: one parser for the runner, the capacity simulation and the locustfile."""

import pytest

from loadtests.mix import Choice, parse_mix
from loadtests.simulate import mean_service_s, simulated_models


def test_a_weight_may_be_left_out_and_every_user_of_the_mix_reads_it_alike():
    assert parse_mix("20,30:2") == {Choice(20): 1.0, Choice(30): 2.0}
    # This mix passed the runner's check and then crashed the simulation's arithmetic.
    assert mean_service_s("20,30:2", time_scale=1.0) > 0


def test_a_mix_may_name_a_model_and_the_simulation_counts_its_passes():
    mix = parse_mix("50:3,fastwan2.2-ti2v-5b@3:1,fastwan2.2-ti2v-5b@3")
    assert mix == {Choice(50): 3.0, Choice(3, "fastwan2.2-ti2v-5b"): 1.0}
    assert Choice(3, "fastwan2.2-ti2v-5b").label == "fastwan2.2-ti2v-5b 3 steps"
    # The default model and the one named, both simulated, with the production recipes.
    models = simulated_models("50:3,fastwan2.2-ti2v-5b@3:1")
    assert [(m["id"], m["checkpoint"]) for m in models] == [
        ("wan2.2-ti2v-5b", "simulated"), ("fastwan2.2-ti2v-5b", "simulated")
    ]  # fmt: skip
    assert [m["id"] for m in simulated_models("20:1")] == ["wan2.2-ti2v-5b"]
    # 3 passes without guidance against 6 with it (3 steps of the default model, in pairs).
    fast = mean_service_s("fastwan2.2-ti2v-5b@3", time_scale=1.0)
    assert fast < mean_service_s("3", time_scale=1.0) and fast == pytest.approx(20.0 + 3 * 3.6)
    with pytest.raises(ValueError, match="does not serve"):
        simulated_models("sora-2@3")


@pytest.mark.parametrize(
    "text", ["20;2", "0:1", "101:1", "20:0", "20:-1", "20:nan", "20:inf", "", "x:1", "@3:1", "fast@:1", "fast@x"]
)
def test_a_bad_mix_is_refused_naming_the_item(text):
    with pytest.raises(ValueError, match=r"is not \[model@\]steps:weight"):
        parse_mix(text)

"""LoRA adapters through HTTP on the real cluster: the local config's `tiny-style` changes the
video and `details.loras` names its SHA-256; an adapter of another base is a 400 from `/predict`
naming `loras[0].path`, refused again at once, and the replica serves the next request. With two
Generator replicas, Serve's model multiplexing sends a request to the replica that holds its
adapter: the hit rate, a cold and a warm request's time and an adapter's load time are printed
(`pytest -s tests/engine/test_lora_routing.py`)."""

import time

import pytest
import torch
from safetensors.torch import save_file
from support.apps import local_app
from support.service import SMALL, TEST_ARGS

from serve_app.deployments import GENERATOR
from serve_app.engine.tiny import ensure_tiny_checkpoint, random_lora

ADAPTERS = [f"style-{index}" for index in range(4)]


def predict(http, loras, seed=7):
    started = time.perf_counter()
    response = http.post("/predict", json={"prompt": "a fox", "seed": seed, "loras": loras, **SMALL})
    return response, time.perf_counter() - started


def test_tiny_style_applies_and_details_name_it(client):
    plain, _ = predict(client, None)
    styled, _ = predict(client, [{"path": "tiny-style", "scale": 0.8}])
    assert plain.status_code == styled.status_code == 200, styled.text
    (applied,) = styled.json()["details"]["loras"]
    assert applied["path"] == "tiny-style" and applied["scale"] == 0.8 and len(applied["sha256"]) == 64
    assert styled.json()["video_base64"] != plain.json()["video_base64"]
    assert predict(client, None)[0].json()["video_base64"] == plain.json()["video_base64"]  # nothing left of it


@pytest.fixture(scope="module")
def two_replicas(apps, tiny_cache, tmp_path_factory):
    """An app of the tiny model on two Generator replicas, holding 2 adapters each, with four
    adapters registered, and one of another base."""
    from diffusers import WanTransformer3DModel

    folder = tmp_path_factory.mktemp("lora-files")
    transformer = WanTransformer3DModel.from_pretrained(ensure_tiny_checkpoint(tiny_cache), subfolder="transformer")
    registry = {}
    for seed, name in enumerate(ADAPTERS):
        save_file(random_lora(transformer, seed=seed), folder / f"{name}.safetensors")
        registry[name] = {"source": str(folder / f"{name}.safetensors")}
    wide = {key: torch.zeros(4, 96) if "lora_A" in key else value for key, value in random_lora(transformer, 9).items()}
    save_file(wide, folder / "other-base.safetensors")
    registry["other-base"] = {"source": str(folder / "other-base.safetensors")}
    app = local_app()
    app.update(name="lora2", route_prefix="/lora2")
    data_dir = tmp_path_factory.mktemp("lora2")
    app["args"].update(
        TEST_ARGS, models=[{"id": "tiny", "checkpoint": "tiny"}], cache_dir=str(tiny_cache), data_dir=str(data_dir),
        lora_registry=registry, max_loras_per_replica=2,
    )  # fmt: skip
    app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith(f"{GENERATOR}-")]
    for deployment in app["deployments"]:
        deployment["ray_actor_options"] = {"num_cpus": 0}
        if deployment["name"] == GENERATOR:
            deployment["num_replicas"] = 2
    apps.deploy(app)
    yield apps.url("lora2")
    apps.remove("lora2")


def test_an_adapter_of_another_base_is_a_400_remembered_and_the_replica_serves_on(two_replicas, client):
    import httpx

    with httpx.Client(base_url=two_replicas, headers=client.headers, timeout=120) as http:
        for _ in range(2):
            refused, _ = predict(http, [{"path": "other-base"}])
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "loras[0].path" and "another base" in error["message"]
        assert predict(http, None)[0].status_code == 200


def test_requests_go_to_the_replica_that_holds_their_adapter(two_replicas, client):
    import httpx

    cold, warm, loads, hits = [], [], [], 0
    with httpx.Client(base_url=two_replicas, headers=client.headers, timeout=120) as http:
        predict(http, None)  # both replicas warm
        predict(http, None)
        rounds = 6
        for round_ in range(rounds):
            for name in ADAPTERS:  # 4 adapters, 2 replicas of 2 each: all fit, if each goes where it is held
                response, seconds = predict(http, [{"path": name}], seed=round_)
                assert response.status_code == 200, response.text
                loading = response.json()["details"]["timings"]["lora_loading_s"]
                if loading:
                    loads.append(loading)
                    cold.append(seconds)
                else:
                    warm.append(seconds)
                    hits += round_ > 0
    rate = hits / (len(ADAPTERS) * (rounds - 1))
    print(
        f"\nLoRA routing, 2 replicas x 2 adapters, 4 adapters in turn, {rounds - 1} rounds after the first: "
        f"hit rate {rate:.0%}; adapter load {sorted(loads)[len(loads) // 2]:.3f} s (median of {len(loads)}); "
        f"request uncached {sum(cold) / len(cold):.2f} s, cached {sum(warm) / max(1, len(warm)):.2f} s (means)"
    )
    # Without routing, a request lands on a random replica of two, which holds its adapter only if
    # it served it lately: a hit about 1 time in 4 here. Serve's router misses now and then: its
    # view of which replica holds what and which is free lags by up to a push interval, and a holding
    # replica it still counts busy (the previous request's stream not yet closed) sends the request to
    # another at once. 100 % on an idle machine, 55 % once in a loaded suite run: twice random's.
    assert rate >= 0.5

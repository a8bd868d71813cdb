"""Both Serve config files against Ray's own schema, with every key one Ray would use: Ray
silently ignores unknown keys, so a typo would quietly become a default."""

from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import (
    DeploymentSchema,
    ServeDeploySchema,
)
from support.configs import unknown_keys

from serve_app.config import AppArgs
from serve_app.deployments import GENERATOR, GPUS_PER_GENERATOR, INGRESS, generator_names, options

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ["serve_config.yaml", "serve_config.local.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def deployments(config: dict) -> dict[str, dict]:
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_for_ray_and_has_no_ignored_keys(name):
    config = load(name)
    schema = ServeDeploySchema.model_validate(config)
    assert unknown_keys(config) == []
    app = schema.applications[0]
    assert app.import_path == "serve_app.app:build_app"
    args = AppArgs.model_validate(app.args)
    # One Generator deployment per model, each configured here (its autoscaling, its resources).
    assert set(deployments(config)) == set(options(args))
    for deployment in deployments(config).values():
        DeploymentSchema.model_validate(deployment)
        if deployment.get("autoscaling_config"):
            AutoscalingConfig(**deployment["autoscaling_config"])
    assert schema.http_options.request_timeout_s >= 1200


def test_the_checker_catches_a_typo():
    config = load("serve_config.yaml")
    generator = deployments(config)["Generator"]
    generator["max_ongoing_request"] = 1
    generator["autoscaling_config"]["upscale_delay"] = 5
    config["applications"][0]["args"]["modle"] = "x"
    config["http_options"]["request_timeout"] = 5
    assert sorted(unknown_keys(config)) == sorted(
        [
            "applications[wan].deployments[Generator].max_ongoing_request",
            "applications[wan].deployments[Generator].autoscaling_config.upscale_delay",
            "applications[wan].args.modle",
            "http_options.request_timeout",
        ]
    )


def test_production_config_serves_the_real_models_one_gpu_per_replica():
    config = load("serve_config.yaml")
    args = AppArgs.model_validate(config["applications"][0]["args"])
    served = {spec.id: spec for spec in args.served_models}
    assert list(served) == ["wan2.2-ti2v-5b", "fastwan2.2-ti2v-5b"]
    assert served["wan2.2-ti2v-5b"].checkpoint == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    fast = served["fastwan2.2-ti2v-5b"]
    assert fast.checkpoint == "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"
    assert (fast.recipe.scheduler, fast.recipe.timesteps, fast.recipe.shift) == ("dmd", [1000, 757, 522], 5.0)
    assert (fast.recipe.default_steps, fast.recipe.guidance) == (3, False)
    # Each model's Generator deployment: its GPU and one job at a time are the code's: a config
    # that set them too could contradict it (and a config's ray_actor_options would replace the
    # code's whole).
    assert list(generator_names(args).values()) == [GENERATOR, "Generator-fastwan2.2-ti2v-5b"]
    for name in generator_names(args).values():
        code, configured = options(args)[name], deployments(config)[name]
        assert code["ray_actor_options"]["num_gpus"] == GPUS_PER_GENERATOR == 1 and code["max_ongoing_requests"] == 1
        assert "ray_actor_options" not in configured and "max_ongoing_requests" not in configured
    generator = deployments(config)[GENERATOR]
    # Safe defaults: the guide's largest video, and a deadline on every generation.
    assert args.max_video_pixels == 1280 * 704 * 121 and args.max_generation_s
    # SQLite on one machine: one Jobs replica (PostgreSQL for more).
    assert deployments(config)["Jobs"]["num_replicas"] == 1
    scaling = AutoscalingConfig(**generator["autoscaling_config"])
    assert scaling.target_ongoing_requests == 1
    assert scaling.min_replicas <= scaling.initial_replicas <= scaling.max_replicas
    assert scaling.upscale_delay_s <= 30
    assert scaling.downscale_delay_s >= 600
    assert generator["graceful_shutdown_timeout_s"] > 15 * 60


def test_local_config_is_cpu_and_tiny():
    config = load("serve_config.local.yaml")
    args = AppArgs.model_validate(config["applications"][0]["args"])
    assert [(spec.id, spec.checkpoint) for spec in args.served_models] == [
        ("tiny", "tiny"),
        ("tiny-turbo", "tiny-turbo"),
    ]
    assert args.device == "cpu"
    for name in generator_names(args).values():
        assert "ray_actor_options" not in deployments(config)[name]
        assert options(args)[name]["ray_actor_options"].get("num_gpus", 0) == 0
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["port"] == 8000


@pytest.mark.parametrize("name", CONFIGS)
def test_the_ingress_caps_fit_in_what_serve_lets_a_replica_hold(name):
    # max_streams (2000) was above the Ingress's max_ongoing_requests (500): past 500, Serve queued
    # requests at the proxy, unbounded, instead of our 429.
    config = load(name)
    args = AppArgs.model_validate(config["applications"][0]["args"])
    ingress = deployments(config)[INGRESS]
    assert args.max_streams + args.max_submissions < ingress["max_ongoing_requests"]
    assert args.max_streams_per_key <= args.max_streams and args.max_submissions_per_key <= args.max_submissions

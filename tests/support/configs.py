"""Serve configs checked against Ray's own schema: Ray silently ignores unknown keys, so a typo
would quietly become a default."""

from pydantic import BaseModel
from ray.serve.config import AutoscalingConfig, HTTPOptions
from ray.serve.schema import (
    DeploymentSchema,
    LoggingConfig,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from serve_app.config import AppArgs


def unknown_keys(config: dict) -> list[str]:
    """Every key of `config` that Ray's schema (or our AppArgs) does not define."""
    problems = []

    def check(section: dict, model: type[BaseModel], where: str) -> None:
        for key in section:
            if key not in model.model_fields:
                problems.append(f"{where}.{key}")

    check(config, ServeDeploySchema, "")
    check(config.get("http_options", {}), HTTPOptions, "http_options")
    check(config.get("logging_config", {}), LoggingConfig, "logging_config")
    for app in config.get("applications", []):
        where = f"applications[{app.get('name')}]"
        check(app, ServeApplicationSchema, where)
        check(app.get("args", {}), AppArgs, f"{where}.args")
        for deployment in app.get("deployments", []):
            dwhere = f"{where}.deployments[{deployment.get('name')}]"
            check(deployment, DeploymentSchema, dwhere)
            check(deployment.get("ray_actor_options", {}), RayActorOptionsSchema, f"{dwhere}.ray_actor_options")
            check(deployment.get("autoscaling_config") or {}, AutoscalingConfig, f"{dwhere}.autoscaling_config")
    return problems

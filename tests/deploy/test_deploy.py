"""The deploy files: the KubeRay manifest against the RayService CRD of KubeRay 1.5 (unknown fields
refused, as a strict kubectl would) and the core objects against Kubernetes' schemas; the
application agrees with serve_config.yaml; the cluster fits it; the image is built on the pinned
Ray version; the dashboard shows metrics that exist."""

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema
from support.configs import unknown_keys
from support.service import ROOT

from serve_app.api.auth import KEYS_ENV
from serve_app.common import metrics
from serve_app.config import DATABASE_URL_ENV, SECRET_ENV

DEPLOY = ROOT / "deploy"
CRD = Path(__file__).with_name("kuberay") / "ray.io_rayservices.v1.5.0.yaml"
KUBERNETES = "1.33"
# What the manifest may set differently from serve_config.yaml: paths on its volumes.
STORAGE_ARGS = {"models", "data_dir", "results_url"}


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def rayservice() -> dict:
    (service,) = [doc for doc in documents("rayservice.yaml") if doc["kind"] == "RayService"]
    return service


def serve_config_v2() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


def groups(service: dict) -> dict[str, dict]:
    cluster = service["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def strict(schema: dict) -> dict:
    """The CRD's schema, with unknown fields refused where the API server would prune them."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for choice in node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", []):
            walk(choice)

    walk(schema)
    return schema


@functools.cache
def rayservice_validator(version: str) -> jsonschema.protocols.Validator:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: libyaml's
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    return jsonschema.validators.validator_for(schema)(schema)


def validate_rayservice(document: dict) -> None:
    rayservice_validator(document["apiVersion"].split("/")[1]).validate(document)


def test_the_rayservice_is_valid_for_kuberay_1_5_and_the_checker_refuses_unknown_fields():
    service = rayservice()
    validate_rayservice(service)
    assert "KubeRay >= 1.5" in (DEPLOY / "rayservice.yaml").read_text().splitlines()[0]
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        validate_rayservice(typo)


@pytest.mark.parametrize("name", ["rayservice.yaml", "storage.yaml"])
def test_the_core_objects_are_valid_for_kubernetes(name):
    core = [doc for doc in documents(name) if doc["apiVersion"] in ("v1", "batch/v1", "networking.k8s.io/v1")]
    assert core
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_serve_config_v2_is_valid_for_ray_and_agrees_with_serve_config_yaml():
    config = serve_config_v2()
    ServeDeploySchema.model_validate(config)
    assert unknown_keys(config) == []
    production = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"] == production["http_options"]
    assert config["proxy_location"] == production["proxy_location"]
    (app,), (prod_app,) = config["applications"], production["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert app[key] == prod_app[key]
    assert {k: v for k, v in app["args"].items() if k not in STORAGE_ARGS} == {
        k: v for k, v in prod_app["args"].items() if k not in STORAGE_ARGS
    }
    # The same models and recipes, from the volume rather than the hub.
    local = [{k: v for k, v in model.items() if k != "checkpoint"} for model in app["args"]["models"]]
    hub = [
        {k: v for k, v in model.items() if k not in ("checkpoint", "revision")} for model in prod_app["args"]["models"]
    ]
    assert local == hub
    deployments, prod_deployments = by_name(app["deployments"]), by_name(prod_app["deployments"])
    for name in prod_deployments:
        if name.startswith("Generator"):
            assert deployments[name] == prod_deployments[name]
    # PostgreSQL: two Jobs replicas, none special. Ingress and Jobs on the CPU group.
    assert deployments["Jobs"]["num_replicas"] == 2 and prod_deployments["Jobs"]["num_replicas"] == 1
    for name in ("Ingress", "Jobs"):
        assert deployments[name]["ray_actor_options"]["resources"] == {"wan_service": 1}
        placed = {k: v for k, v in deployments[name].items() if k not in ("num_replicas", "ray_actor_options")}
        assert placed == {
            k: v for k, v in prod_deployments[name].items() if k not in ("num_replicas", "ray_actor_options")
        }


def test_the_cluster_fits_the_application():
    service = rayservice()
    spec, config = service["spec"], serve_config_v2()
    cluster = spec["rayClusterConfig"]
    generator = by_name(config["applications"][0]["deployments"])["Generator"]
    head, cpu, gpu = groups(service)["head"], groups(service)["service"], groups(service)["gpu"]

    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    # The head runs no replica; the CPU group offers the resource that places Ingress and Jobs.
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert json.loads(json.loads(cpu["rayStartParams"]["resources"])) == {"wan_service": 100}
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # One GPU per worker pod, one GPU per generator replica, as many pods as replicas at most.
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == generator["ray_actor_options"]["num_gpus"] == 1
    assert gpu["maxReplicas"] == generator["autoscaling_config"]["max_replicas"]
    assert gpu["minReplicas"] == generator["autoscaling_config"]["min_replicas"]
    assert gpu["template"]["spec"]["tolerations"] and gpu["template"]["spec"]["nodeSelector"]
    # The old cluster outlives its longest job after an upgrade; a head restart keeps the app (Redis).
    assert spec["rayClusterDeletionDelaySeconds"] > generator["graceful_shutdown_timeout_s"] >= 15 * 60
    assert cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "wan-redis"


def test_secrets_images_ports_and_volumes_are_consistent():
    service = rayservice()
    config = serve_config_v2()
    args = config["applications"][0]["args"]
    pods = {name: group["template"]["spec"] for name, group in groups(service).items()}
    containers = [container for pod in pods.values() for container in pod["containers"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()

    assert len({c["image"] for c in containers}) == 1
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py311-gpu$", dockerfile, re.M)
    assert f"EXPOSE {config['http_options']['port']}" in dockerfile
    for container in containers:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == config["http_options"]["port"] and ports["metrics"] == 8080
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert env[KEYS_ENV]["name"] == "wan-api-keys" and not env[KEYS_ENV].get("optional")
        assert env[SECRET_ENV]["name"] == "wan-webhook-secret"
        # The database's password lives in a Secret (CloudNativePG's, or yours), never in the file.
        assert env[DATABASE_URL_ENV] == {"name": "wan-postgres-app", "key": "uri"}
    assert "postgresql://" not in (DEPLOY / "rayservice.yaml").read_text()
    for group in groups(service).values():
        assert group["rayStartParams"]["metrics-export-port"] == "8080"

    claims = {
        doc["metadata"]["name"]: doc for doc in documents("storage.yaml") if doc["kind"] == "PersistentVolumeClaim"
    }
    mounts = {
        name: {mount["mountPath"]: next(v for v in pod.get("volumes", []) if v["name"] == mount["name"])
               for container in pod["containers"] for mount in container.get("volumeMounts", [])}
        for name, pod in pods.items()
    }  # fmt: skip
    # The shared volume holds results only (no database), read by every Ingress replica.
    assert "data_dir" not in args and args["results_url"] == "/data/results"
    assert mounts["service"]["/data"]["persistentVolumeClaim"]["claimName"] == "wan-results"
    assert claims["wan-results"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # The weights on a volume the download Job fills before the RayService is applied.
    assert mounts["gpu"]["/models"]["persistentVolumeClaim"]["claimName"] == "wan-models"
    (job,) = [doc for doc in documents("storage.yaml") if doc["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "wan-models"
    for model in args["models"]:
        assert model["checkpoint"].startswith("/models/")
        assert f"--local-dir {model['checkpoint']}" in " ".join(
            job["spec"]["template"]["spec"]["containers"][0]["command"]
        )
    # Storage classes are named where they matter.
    assert all(claim["spec"].get("storageClassName") for claim in claims.values())


def test_only_the_serve_port_is_open_and_the_ingress_outlasts_a_long_request():
    objects = {doc["kind"]: doc for doc in documents("rayservice.yaml")}
    rules = objects["NetworkPolicy"]["spec"]["ingress"]
    open_ports = [port["port"] for rule in rules if "from" not in rule for port in rule["ports"]]
    assert open_ports == [8000]
    internal = [rule for rule in rules if "from" in rule and "ports" not in rule]
    assert internal == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wan-serve"}}}]}]
    for pod in (group["template"] for group in groups(rayservice()).values()):
        assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "wan-serve"}
    annotations = objects["Ingress"]["metadata"]["annotations"]
    timeout = serve_config_v2()["http_options"]["request_timeout_s"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= timeout
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= timeout


def test_the_dashboard_shows_only_metrics_that_exist():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"ray_(wan_\w+?)(?:_total|_bucket|_count|_sum)?\b", expr)}
    source = Path(metrics.__file__).read_text()
    defined = set(re.findall(r'"(wan_\w+)"', source))
    assert used and used <= defined
    assert defined <= used  # every metric is on the dashboard

"""The deploy files: the KubeRay manifest against the RayService CRD of KubeRay 1.5 (unknown fields
refused, as a strict kubectl would) and the core objects against Kubernetes' schemas; the
application agrees with serve_config.yaml; the cluster fits it; the image is built on the pinned
Ray version; the dashboard shows metrics that exist."""

import copy
import functools
import json
import re
import tomllib
from pathlib import Path
from typing import get_args

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.serve.schema import ServeDeploySchema
from support.configs import unknown_keys
from support.service import ROOT

from serve_app.api.auth import KEY_ID_SECRET_ENV, KEYS_ENV
from serve_app.common import metrics
from serve_app.config import DATABASE_URL_ENV, SECRET_ENV, GpusPerReplica
from serve_app.deployments import GPUS_PER_GENERATOR

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


@pytest.mark.parametrize("name", ["rayservice.yaml", "storage.yaml", "network.yaml", "ingress-nginx.yaml"])
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
    # Loopback on one machine (its proxy the only way in); the pod network on Kubernetes, where
    # deploy/network.yaml admits only nginx.
    assert production["http_options"].pop("host") == "127.0.0.1" and config["http_options"].pop("host") == "0.0.0.0"
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
    assert limits["nvidia.com/gpu"] == GPUS_PER_GENERATOR and "ray_actor_options" not in generator
    assert gpu["maxReplicas"] == generator["autoscaling_config"]["max_replicas"]
    assert gpu["minReplicas"] == generator["autoscaling_config"]["min_replicas"]
    assert gpu["template"]["spec"]["tolerations"] and gpu["template"]["spec"]["nodeSelector"]
    # The old cluster outlives its longest job after an upgrade; a head restart keeps the app (Redis).
    assert spec["rayClusterDeletionDelaySeconds"] > generator["graceful_shutdown_timeout_s"] >= 15 * 60
    assert cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "wan-redis"


def test_the_optional_wide_gpu_group_is_off_and_holds_the_widest_replica_on_one_node():
    wide, narrow = groups(rayservice())["gpu-wide"], groups(rayservice())["gpu"]
    assert wide["minReplicas"] == wide["maxReplicas"] == wide["replicas"] == 0  # raised to use it
    limits, narrow_limits = (g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in (wide, narrow))
    # A gang's GPUs are one STRICT_PACK placement group: the widest (8) must fit one pod.
    assert limits["nvidia.com/gpu"] == max(get_args(GpusPerReplica)) == 8
    # Each GPU with the CPUs and memory a one-GPU pod gives it (CPUs as a count, memory in Gi in both).
    for resource in ("cpu", "memory"):
        per_gpu = [float(g[resource].removesuffix("Gi")) / g["nvidia.com/gpu"] for g in (limits, narrow_limits)]
        assert per_gpu[0] == per_gpu[1], resource


def test_secrets_images_ports_and_volumes_are_consistent():
    service = rayservice()
    config = serve_config_v2()
    args = config["applications"][0]["args"]
    pods = {name: group["template"]["spec"] for name, group in groups(service).items()}
    containers = [container for pod in pods.values() for container in pod["containers"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()

    assert len({c["image"] for c in containers}) == 1
    base = rf"rayproject/ray:{re.escape(ray.__version__)}-py311-gpu"
    assert re.search(rf"^ARG RAY_IMAGE={base}$", dockerfile, re.M) and "\nFROM ${RAY_IMAGE}\n" in dockerfile
    assert f"EXPOSE {config['http_options']['port']}" in dockerfile
    for container in containers:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == config["http_options"]["port"] and ports["metrics"] == 8080
    # The app's secrets on the pods of the Ingress and Jobs replicas only: none on the head, none on
    # a GPU worker (every secret was on every pod).
    (service_container,) = pods["service"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in service_container["env"] if "valueFrom" in e}
    assert env[KEYS_ENV]["name"] == "wan-api-keys" and not env[KEYS_ENV].get("optional")
    assert env[KEY_ID_SECRET_ENV] == {"name": "wan-api-keys", "key": "key-id-secret"}
    assert env[SECRET_ENV]["name"] == "wan-webhook-secret"
    # The database's password lives in a Secret (CloudNativePG's, or yours), never in the file.
    assert env[DATABASE_URL_ENV] == {"name": "wan-postgres-app", "key": "uri"}
    others = [e for name in ("head", "gpu") for c in pods[name]["containers"] for e in c.get("env", [])]
    assert [e for e in others if "valueFrom" in e] == []
    assert "HF_TOKEN" not in (DEPLOY / "rayservice.yaml").read_text()  # the weights are on a volume
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
    # One download container per served model, into the folder its checkpoint names.
    downloads = [container["command"] for container in job["spec"]["template"]["spec"]["containers"]]
    assert [model["checkpoint"] for model in args["models"]] == [c[c.index("--local-dir") + 1] for c in downloads]
    assert all(model["checkpoint"].startswith("/models/") for model in args["models"])
    # Storage classes are named where they matter.
    assert all(claim["spec"].get("storageClassName") for claim in claims.values())


def test_the_weights_are_pinned_and_no_pod_downloads_them():
    (job,) = [doc for doc in documents("storage.yaml") if doc["kind"] == "Job"]
    downloads = [container["command"] for container in job["spec"]["template"]["spec"]["containers"]]
    # huggingface_hub 1.x's command, at a revision; the default model's a commit, not a branch
    # that moves (FastWan2.2's commit is still to be chosen: deploy/storage.yaml).
    assert all(command[:2] == ["hf", "download"] and "--revision" in command for command in downloads)
    default = downloads[0]
    assert re.fullmatch(r"[0-9a-f]{40}", default[default.index("--revision") + 1])
    # The generators load the very folders the Job filled, and never try the hub.
    models = serve_config_v2()["applications"][0]["args"]["models"]
    assert [model["checkpoint"] for model in models] == [c[c.index("--local-dir") + 1] for c in downloads]
    for name, group in groups(rayservice()).items():
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}, name
        assert "HF_TOKEN" not in env, name


def pod_labels() -> dict[str, dict[str, str]]:
    """Each Ray pod's labels: the template's and KubeRay's own."""
    return {
        name: {**group["template"]["metadata"]["labels"], "ray.io/group": name if name != "head" else "headgroup",
               "ray.io/node-type": "head" if name == "head" else "worker"}
        for name, group in groups(rayservice()).items()
    }  # fmt: skip


def policies() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc["spec"] for doc in documents("network.yaml")}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def rules_for(labels: dict[str, str], kind: str) -> list[dict]:
    """Every `kind` (ingress or egress) rule of the policies that select a pod with these labels."""
    return [rule for spec in policies().values() if selects(spec["podSelector"], labels)
            and kind.capitalize() in spec["policyTypes"] for rule in spec.get(kind, [])]  # fmt: skip


def test_the_policies_admit_nginx_to_the_serve_port_only_and_the_operator_to_the_dashboard_only():
    # Port 8000 was open to every source (bypassing nginx), the dashboard to all of kuberay-system.
    for name, labels in pod_labels().items():
        rules = rules_for(labels, "ingress")
        assert all("from" in rule for rule in rules), name  # no rule admits every source
        by_port = {port["port"]: rule["from"] for rule in rules for port in rule.get("ports", [])}
        assert by_port[8000] == [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
        }]  # fmt: skip
        for port in (8265, 52365):
            (peer,) = by_port[port]
            assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
        unrestricted = [rule for rule in rules if "ports" not in rule]
        assert unrestricted == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wan-serve"}}}]}]


def test_egress_is_the_cluster_dns_redis_postgres_and_for_the_service_group_public_http_only():
    # No egress policy: the app's SSRF filter was the only barrier.
    private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8"}
    for name, labels in pod_labels().items():
        rules = rules_for(labels, "egress")
        blocks = [peer["ipBlock"] for rule in rules for peer in rule["to"] if "ipBlock" in peer]
        internet = [block for block in blocks if block["cidr"] in ("0.0.0.0/0", "::/0")]
        if name == "service":  # image_url and webhook_url
            assert private <= set(internet[0]["except"]) and "fe80::/10" in internet[1]["except"]
            (rule,) = [rule for rule in rules if any("ipBlock" in peer for peer in rule["to"])]
            assert sorted(port["port"] for port in rule["ports"]) == [80, 443]
        else:
            assert internet == [], name
        if name == "gpu":
            assert blocks == []  # a generator reaches only the cluster's own pods and DNS
    for store, port in (("wan-redis", 6379), ("wan-postgres", 5432)):
        spec = policies()[store]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert all("ipBlock" not in peer or peer["ipBlock"]["cidr"].endswith("/32") for rule in spec["egress"]
                   for peer in rule["to"])  # fmt: skip
        clients = [
            peer for rule in spec["ingress"] for peer in rule["from"] if port in [p["port"] for p in rule["ports"]]
        ]
        assert any(selects(peer["podSelector"], pod_labels()["service" if store == "wan-postgres" else "head"])
                   for peer in clients)  # fmt: skip
        assert not any(selects(peer["podSelector"], pod_labels()["gpu"]) for peer in clients)


def test_every_ray_pod_runs_as_the_ray_user_without_privilege_escalation():
    # The Ray image gives its user passwordless sudo: allowPrivilegeEscalation false stops it.
    for name, group in groups(rayservice()).items():
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
        assert pod.get("automountServiceAccountToken", True) is (name == "head")  # the autoscaler asks the API
    assert "\nUSER 1000\n" in (DEPLOY / "Dockerfile").read_text()


def test_the_ingress_is_tls_strips_rays_hints_and_outlasts_a_long_request():
    objects = {doc["kind"]: doc for doc in documents("rayservice.yaml")}
    ingress = objects["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["tls"] == [{"hosts": [ingress["spec"]["rules"][0]["host"]], "secretName": "wan-serve-tls"}]
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    timeout = serve_config_v2()["http_options"]["request_timeout_s"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= timeout
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= timeout
    # nginx holds what slow readers have not taken (not Serve's unbounded proxy queue).
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "on"
    (headers,) = documents("ingress-nginx.yaml")
    assert headers["data"] == {"x-request-timeout-seconds": "", "x-request-disconnect-disabled": ""}
    assert "proxy-set-headers" in (DEPLOY / "ingress-nginx.yaml").read_text()


def test_the_image_installs_its_dependencies_from_the_lock_file_by_hash():
    lock = (DEPLOY / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9._-]+)==(\S+) \\$", lock, re.M))
    blocks = re.split(r"\n(?=[a-z0-9])", lock.split("\n", 2)[2])
    assert len(pins) == len(blocks) > 50 and all("--hash=sha256:" in block for block in blocks)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["s3"]]
    names = {canonicalize_name(Requirement(spec).name) for spec in wanted}
    assert names - {"torch"} <= {canonicalize_name(name) for name in pins} and "torch" not in pins
    assert pins["ray"] == ray.__version__
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile


def test_the_dashboard_shows_only_metrics_that_exist():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"ray_(wan_\w+?)(?:_total|_bucket|_count|_sum)?\b", expr)}
    source = Path(metrics.__file__).read_text()
    defined = set(re.findall(r'"(wan_\w+)"', source))
    assert used and used <= defined
    assert defined <= used  # every metric is on the dashboard

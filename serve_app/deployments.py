"""The deployments of the application (the Ingress, Jobs, one Generator per served model): their
names, the options the code gives them, and how many replicas of one are running.

`options` is the one place of the deployments' options that do not depend on where the app runs;
the config files (serve_config*.yaml, deploy/rayservice.yaml) set only what does (replica counts,
autoscaling, the Ingress's CPUs, shutdown and health-check timing, placement). Ray Serve's
precedence: the code gives defaults, and a config file wins, option by option, except that a
config's `ray_actor_options` replaces the code's whole dict. So no config sets the Generator's
`ray_actor_options`: its GPU is counted here alone (`GPUS_PER_GENERATOR`).
"""

from collections import Counter
from typing import TYPE_CHECKING, Any, cast

from serve_app.config import AppArgs

if TYPE_CHECKING:
    from ray.serve._private.client import ServeControllerClient

APP = "wan"  # the application's name in both Serve configs
INGRESS = "Ingress"
JOBS = "Jobs"
GENERATOR = "Generator"  # the default model's; another served model's is `generator_name(id)`
# A job fills a GPU: one GPU a replica (a rank, with gpus_per_replica > 1), one generation at a
# time, no batching.
GPUS_PER_GENERATOR = 1


def generator_name(model: str, default: bool) -> str:
    """The Generator deployment of a served model: one each, so that each autoscales on its own
    queue and a job runs on a replica that holds its model (see docs/architecture.md)."""
    return GENERATOR if default else f"{GENERATOR}-{model}"


def generator_names(args: AppArgs) -> dict[str, str]:
    """Each served model's Generator deployment, by model id, the default model's first."""
    return {spec.id: generator_name(spec.id, default=index == 0) for index, spec in enumerate(args.served_models)}


def options(args: AppArgs) -> dict[str, dict[str, Any]]:
    """Each deployment's options in code (`serve.deployment` keywords), by name: one Generator
    deployment per served model, all with the same options."""
    on_gpu = args.device != "cpu"
    # On a GPU, CPUs for the text encoder's tokenizer, decoding and MP4 encoding.
    rank: dict[str, float] = {"num_gpus": GPUS_PER_GENERATOR, "num_cpus": 4} if on_gpu else {"num_cpus": 1}
    generator = {
        "max_ongoing_requests": 1,
        "ray_actor_options": rank,
        "max_constructor_retry_count": args.max_constructor_retries,
        **gang_placement(args.gpus_per_replica, rank),
    }
    return {
        INGRESS: {},
        JOBS: {
            # Its replica count is the config's: 1 with SQLite, 2 or more with PostgreSQL (see jobs/).
            # Every follower of a job (SSE, a waiting /predict) holds one long-poll call here.
            "max_ongoing_requests": 10_000,
            "ray_actor_options": {"num_cpus": 0},
            # On a rolling update or shutdown it follows its running jobs to their end (see jobs/handover.py).
            "graceful_shutdown_timeout_s": 1200,
        },
        **{name: dict(generator) for name in generator_names(args).values()},
    }


def gang_placement(ranks: int, rank: dict[str, float]) -> dict[str, Any]:
    """A replica of several ranks (`gpus_per_replica`) reserves them all on one node: one bundle a
    rank, the first the replica's own (rank 0), where it starts the others (engine/gang.py)."""
    if ranks == 1:
        return {}
    bundle = {"GPU": rank.get("num_gpus", 0), "CPU": rank.get("num_cpus", 0)}
    return {
        "placement_group_bundles": [{name: amount for name, amount in bundle.items() if amount}] * ranks,
        "placement_group_strategy": "STRICT_PACK",
    }


def gang_rank_prefix(app: str, deployment: str) -> str:
    """The names of a replica's other ranks start so (then its id, then `#rank`), as its own
    actor's name does with SERVE_REPLICA (for operators and tests to find them)."""
    return f"SERVE_GANG_RANK::{app}#{deployment}#"


def _controller() -> "ServeControllerClient":
    """The Serve controller's client. `serve.status()` is not used to ask it: it rebuilds the whole
    cluster's status as pydantic models, and each deployment's request-router config cloudpickles a
    module, walking `sys.modules` (measured: 112 ms of CPU a call with 4 applications, 250 ms in a
    process that has imported torch; 2 ms for the same answer as the dict the controller sends)."""
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    return cast(ServeControllerClient, _get_global_client())  # it raises when no controller runs


def app_status(app_name: str) -> str:
    """The application's status (RUNNING, DEPLOYING, DEPLOY_FAILED...; NOT_STARTED when there is
    none), from the Serve controller. Blocks: call from a thread."""
    return str(_controller().get_serve_status(app_name).app_status.status.value)


def replica_states(app_name: str, deployment: str) -> dict[str, int]:
    """Replicas of `deployment` by state (RUNNING, STARTING, STOPPING...), from the Serve controller:
    a replica busy with a 10-minute job is still running (asking a replica itself would wait behind
    the job). Read from the controller's details (the ServeInstanceDetails schema, as its REST API
    serves them). Blocks: call from a thread."""
    from ray.serve._private.common import ReplicaState

    app = _controller().get_serve_details()["applications"].get(app_name)
    replicas = app["deployments"].get(deployment, {}).get("replicas", []) if app else []
    return dict(Counter(ReplicaState(replica["state"]).value for replica in replicas))


def running_replicas(app_name: str, deployment: str) -> int:
    return replica_states(app_name, deployment).get("RUNNING", 0)


def generator_slots(app_name: str, deployment: str) -> int:
    """The most requests `deployment` runs at once: its most replicas (autoscaling's `max_replicas`,
    or `num_replicas`) times `max_ongoing_requests`, as the Serve controller applies them now (the
    config files set them, so they are read back, not repeated). Blocks: call from a thread."""
    info, _ = _controller().get_deployment_info(deployment, app_name)
    config = info.deployment_config
    replicas = config.autoscaling_config.max_replicas if config.autoscaling_config else config.num_replicas or 1
    return int(replicas * config.max_ongoing_requests)

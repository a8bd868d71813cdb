"""The three deployments of the application: their names, the options that are theirs whatever a
config file says (set in `serve_app.app`), and how many replicas of one are running."""

APP = "wan"  # the application's name in both Serve configs
INGRESS = "Ingress"
JOBS = "Jobs"
GENERATOR = "Generator"  # the default model's; another served model's is `generator_name(id)`
# One generation at a time per replica and no batching: a job fills a GPU.
GENERATOR_MAX_ONGOING_REQUESTS = 1


def generator_name(model: str, default: bool) -> str:
    """The Generator deployment of a served model: one each, so that each autoscales on its own
    queue and a job runs on a replica that holds its model (see docs/architecture.md)."""
    return GENERATOR if default else f"{GENERATOR}-{model}"


def replica_states(app_name: str, deployment: str) -> dict[str, int]:
    """Replicas of `deployment` by state (RUNNING, STARTING, STOPPING...), from the Serve controller:
    a replica busy with a 10-minute job is still running (asking a replica itself would wait behind
    the job). Blocks: call from a thread."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    status = app.deployments.get(deployment) if app else None
    return dict(status.replica_states) if status else {}


def running_replicas(app_name: str, deployment: str) -> int:
    return replica_states(app_name, deployment).get("RUNNING", 0)

"""The three deployments of the application: their names, the options that are theirs whatever a
config file says (set in `serve_app.app`), and how many replicas of one are running."""

APP = "wan"  # the application's name in both Serve configs
INGRESS = "Ingress"
JOBS = "Jobs"
GENERATOR = "Generator"
# One generation at a time per replica and no batching: a job fills a GPU.
GENERATOR_MAX_ONGOING_REQUESTS = 1


def replica_states(app_name: str, deployment: str) -> dict[str, int]:
    """Replicas of `deployment` by state (RUNNING, STARTING, STOPPING...), from the Serve controller:
    a replica busy with a 10-minute job is still running (asking a replica itself would wait behind
    the job). Blocks: call from a thread."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    status = app.deployments.get(deployment) if app else None
    # Typed as ReplicaState (a str enum), the keys come as plain strings: either is a str.
    return {state: count for state, count in status.replica_states.items()} if status else {}


def running_replicas(app_name: str, deployment: str) -> int:
    return replica_states(app_name, deployment).get("RUNNING", 0)

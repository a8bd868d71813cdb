"""The Ray Serve application: `serve_app.app:build_app` binds the ingress to the jobs deployment
and that to the generator. This is the only place where classes become deployments."""

from ray import serve
from ray.serve import Application

from serve_app.api.ingress import Ingress
from serve_app.config import AppArgs
from serve_app.deployments import GENERATOR_MAX_ONGOING_REQUESTS, INGRESS, JOBS, generator_name
from serve_app.engine.generator import Generator
from serve_app.jobs.deployment import Jobs


def build_app(args: AppArgs) -> Application:
    """Ray calls this with the `args` of the config file, validated as AppArgs."""
    if isinstance(args, dict):  # `serve.run(build_app({...}))` from Python
        args = AppArgs.model_validate(args)
    # One Generator deployment per served model, the default's named `Generator`.
    generators = {
        spec.id: serve.deployment(
            Generator,
            name=generator_name(spec.id, default=index == 0),
            max_ongoing_requests=GENERATOR_MAX_ONGOING_REQUESTS,
            ray_actor_options={"num_gpus": 0 if args.device == "cpu" else 1},
            max_constructor_retry_count=args.max_constructor_retries,
        ).bind(args, spec.id)
        for index, spec in enumerate(args.served_models)
    }
    jobs = serve.deployment(
        Jobs,
        name=JOBS,
        # Its replica count is the config's: 1 with SQLite, 2 or more with PostgreSQL (see jobs/).
        # Every follower of a job (SSE, a waiting /predict) holds one long-poll call here.
        max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0},
        # On a rolling update or shutdown it follows its running jobs to their end (see jobs/handover.py).
        graceful_shutdown_timeout_s=1200,
    )
    ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS)
    return ingress.bind(jobs.bind(generators, args), args)

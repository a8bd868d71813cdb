"""The Ray Serve application: `serve_app.app:build_app` binds the ingress to the jobs deployment
and that to the generator. This is the only place where classes become deployments."""

from ray import serve
from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.generator import Generator
from serve_app.ingress import GENERATOR_DEPLOYMENT, INGRESS_DEPLOYMENT, JOBS_DEPLOYMENT, Ingress
from serve_app.jobs import Jobs


def build_app(args: AppArgs) -> Application:
    """Ray calls this with the `args` of the config file, validated as AppArgs."""
    if isinstance(args, dict):  # `serve.run(build_app({...}))` from Python
        args = AppArgs.model_validate(args)
    generator = serve.deployment(
        Generator,
        name=GENERATOR_DEPLOYMENT,
        # One generation at a time per replica and no batching: a job fills a GPU.
        max_ongoing_requests=1,
        ray_actor_options={"num_gpus": 0 if args.device == "cpu" else 1},
        max_constructor_retry_count=args.max_constructor_retries,
    )
    jobs = serve.deployment(
        Jobs,
        name=JOBS_DEPLOYMENT,
        # The single source of truth for job state and the one queue: never more than one replica.
        num_replicas=1,
        # Every follower of a job (SSE, a waiting /predict) holds one long-poll call here.
        max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0},
        # On a rolling update or shutdown it follows its running jobs to their end (see Jobs.__del__).
        graceful_shutdown_timeout_s=1200,
    )
    ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS_DEPLOYMENT)
    return ingress.bind(jobs.bind(generator.bind(args), args), args)

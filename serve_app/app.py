"""The Ray Serve application: `serve_app.app:build_app` binds the ingress to the jobs deployment
and that to the generator. This is the only place where classes become deployments."""

from ray import serve
from ray.serve import Application

from serve_app.api.ingress import Ingress
from serve_app.config import AppArgs
from serve_app.deployments import GENERATOR, GENERATOR_MAX_ONGOING_REQUESTS, INGRESS, JOBS
from serve_app.engine.generator import Generator
from serve_app.handles import GeneratorDeployment, JobsDeployment
from serve_app.jobs.deployment import Jobs

# Typed as what their callers' handles call (serve_app/handles.py): mypy checks here that each class
# has every method of its Protocol, with a compatible signature.
GENERATOR_CLASS: type[GeneratorDeployment] = Generator
JOBS_CLASS: type[JobsDeployment] = Jobs


def build_app(args: AppArgs) -> Application:
    """Ray calls this with the `args` of the config file, validated as AppArgs."""
    if isinstance(args, dict):  # `serve.run(build_app({...}))` from Python
        args = AppArgs.model_validate(args)
    generator = serve.deployment(
        name=GENERATOR,
        max_ongoing_requests=GENERATOR_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_gpus": 0 if args.device == "cpu" else 1},
        max_constructor_retry_count=args.max_constructor_retries,
    )(GENERATOR_CLASS)
    jobs = serve.deployment(
        name=JOBS,
        # Its replica count is the config's: 1 with SQLite, 2 or more with PostgreSQL (see jobs/).
        # Every follower of a job (SSE, a waiting /predict) holds one long-poll call here.
        max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0},
        # On a rolling update or shutdown it follows its running jobs to their end (see jobs/handover.py).
        graceful_shutdown_timeout_s=1200,
    )(JOBS_CLASS)
    ingress = serve.deployment(name=INGRESS)(serve.ingress()(Ingress))
    return ingress.bind(jobs.bind(generator.bind(args), args), args)

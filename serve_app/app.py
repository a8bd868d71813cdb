"""The Ray Serve application: `serve_app.app:build_app` binds the ingress to the jobs deployment
and that to the generator. This is the only place where classes become deployments, with the
options of `serve_app.deployments` (a config file's win over them)."""

from ray import serve
from ray.serve import Application

from serve_app.api.ingress import Ingress
from serve_app.config import AppArgs
from serve_app.deployments import INGRESS, JOBS, generator_names, options
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
    deployment = options(args)
    # One Generator deployment per served model, the default's named `Generator`.
    generators = {
        model: serve.deployment(name=name, **deployment[name])(GENERATOR_CLASS).bind(args, model)
        for model, name in generator_names(args).items()
    }
    jobs = serve.deployment(name=JOBS, **deployment[JOBS])(JOBS_CLASS)
    ingress = serve.deployment(name=INGRESS, **deployment[INGRESS])(serve.ingress()(Ingress))
    return ingress.bind(jobs.bind(generators, args), args)

"""A Generator replica of several GPUs (a gang, `gpus_per_replica` > 1): the Serve replica is
rank 0; it starts the other ranks as actors in its own placement group (Serve reserves one bundle
a rank, all on one node), and every request runs on all of them (`parallel.py`).

Rank 0 encodes the prompts, reports progress, decodes and answers; a cancel stops every rank at
the same step. A rank that dies, or any failure that leaves the ranks out of step, breaks the
gang for good: its job fails as `replica_died`, and the replica's health check fails, so that Serve
replaces the whole gang (the other ranks are the replica's actors: they end with it).
"""

import logging
import threading

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.context import _get_internal_replica_context
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch._C._distributed_c10d import TCPStore

from serve_app.common.logs import use_serve_log_handlers
from serve_app.common.metrics import AdapterMetrics
from serve_app.config import AppArgs, ModelSpec
from serve_app.deployments import gang_rank_prefix
from serve_app.engine import parallel
from serve_app.engine.adapters import lora_adapters
from serve_app.engine.errors import GenerationCancelled, LoraRefused, ModelLoadError, RankDied
from serve_app.engine.model import load_model, resolve_device
from serve_app.engine.pipeline import Report
from serve_app.messages import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)

# How long a health check waits for each other rank to answer (they answer while they denoise).
PING_TIMEOUT_S = 10


def start_rank(args: AppArgs, spec: ModelSpec, rank: int, store: TCPStore) -> parallel.RankRunner:
    """Join the gang, then load the model and split it as the gang's degrees say."""
    device = resolve_device(args.device)
    joined = parallel.join(store, rank, args.degrees(spec), device)
    model = load_model(spec.checkpoint, device, args.cache_dir, args.pipeline_options, spec.revision)
    events = AdapterMetrics(spec.id) if joined.leader else None  # counted once for the gang
    return parallel.RankRunner(model, spec, joined, lora_adapters(args, model.t2v, model.lora_slots, events))


@ray.remote(max_restarts=0)
class GangRank:
    """A rank other than 0: it follows each request rank 0 runs."""

    def __init__(self, args: AppArgs, spec: ModelSpec, rank: int, host: str, port: int) -> None:
        use_serve_log_handlers()
        store = parallel.rendezvous(host, port, args.degrees(spec).world, leader=False)
        self.runner = start_rank(args, spec, rank, store)

    def node(self) -> str:
        """Its Ray node, also the answer to a ping."""
        return ray.get_runtime_context().get_node_id()

    def warm_up(self, size: str) -> None:
        self.runner.warm_up(size)  # in step with rank 0's

    def follow(self, request: GenerationRequest) -> None:
        self.runner.follow(request)


class GangRunner:
    """The `Runner` of a gang's rank 0: it runs each request on every rank."""

    def __init__(self, args: AppArgs, spec: ModelSpec) -> None:
        degrees = args.degrees(spec)
        group = get_current_placement_group()
        if group is None or len(group.bundle_specs) != degrees.world:
            raise ModelLoadError(
                f"gpus_per_replica {args.gpus_per_replica} needs a placement group of one bundle a rank "
                "(the Generator deployment's placement_group_bundles, set by serve_app/deployments.py)"
            )
        replica = _get_internal_replica_context()  # None outside Serve
        prefix = None
        if replica is not None:
            prefix = gang_rank_prefix(replica.app_name, replica.deployment) + replica.replica_id.unique_id
        host = ray.util.get_node_ip_address()
        store = parallel.rendezvous(host, 0, degrees.world, leader=True)
        self.workers = [
            GangRank.options(  # type: ignore[attr-defined]  # Ray's remote classes are typed as the class
                name=f"{prefix}#{rank}" if prefix else None,
                max_concurrency=2,  # a health check's ping is answered while a job runs
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
            ).remote(args, spec, rank, host, store.port)
            for rank, bundle in enumerate(group.bundle_specs)
            if rank > 0
        ]
        self.leader = start_rank(args, spec, 0, store)  # returns once every rank has joined
        try:
            self.nodes = [self.leader_node(), *ray.get([worker.node.remote() for worker in self.workers])]
        except RayActorError as exc:
            raise ModelLoadError(f"a rank of the gang failed to start: {exc}") from exc
        self.capacity = self.leader.capacity  # each rank's, and so the gang's: every rank holds the video
        self.description = {**self.leader.description, "ranks": degrees.world}
        self.broken: str | None = None
        logger.info("gang of %d ranks (%s) on node %s", degrees.world, degrees.details, self.nodes[0][:12])

    @staticmethod
    def leader_node() -> str:
        return ray.get_runtime_context().get_node_id()

    def warm_up(self, size: str) -> None:
        warming = [worker.warm_up.remote(size) for worker in self.workers]
        self.leader.warm_up(size)
        ray.get(warming)

    def run(
        self, request: GenerationRequest, report: Report = lambda _: None, cancel: threading.Event | None = None
    ) -> GenerationResult:
        """`PipelineRunner.run` on every rank; RankDied if a rank died or the ranks fell out of step."""
        if self.broken:
            raise RankDied(self.broken)
        self.leader.check_fits(request)  # before any rank starts: a refusal leaves them in step
        following = [worker.follow.remote(request) for worker in self.workers]
        try:
            result = self.leader.run(request, report, cancel)
        except (GenerationCancelled, LoraRefused):
            # Every rank stopped at the same step, or refused the same adapter before any work.
            self._wait(following)
            raise
        except Exception as exc:
            self.broken = f"the gang's ranks are out of step after a failed job: {exc}"
            raise RankDied(self.broken) from exc
        self._wait(following)
        return result

    def _wait(self, following: list[ray.ObjectRef[None]]) -> None:
        try:
            ray.get(following, timeout=parallel.COLLECTIVE_TIMEOUT_S)
        except (RayActorError, GetTimeoutError) as exc:
            self.broken = f"a rank of the gang died: {exc}"
            raise RankDied(self.broken) from exc

    def check_health(self) -> None:
        """Raises if the gang is broken, rank 0's GPU is gone, or one of its other ranks is gone."""
        if self.broken:
            raise RuntimeError(self.broken)
        self.leader.check_health()
        try:
            ray.get([worker.node.remote() for worker in self.workers], timeout=PING_TIMEOUT_S)
        except (RayActorError, GetTimeoutError) as exc:
            self.broken = f"a rank of the gang does not answer: {exc}"
            raise RuntimeError(self.broken) from exc

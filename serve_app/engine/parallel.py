"""One video over the ranks of a gang (several GPUs, or several CPU processes over gloo): their
process group, diffusers' context parallelism (Ulysses, ring) on the transformer, CFG parallel
(the two passes of guidance on two ranks), the prompts encoded on rank 0 and broadcast, and a
cancel that every rank obeys at the same step. No Ray here: `gang.py` starts the ranks.

Every rank runs the same denoising loop on the same latents (the same seed gives each the same
noise, and each collective leaves every rank the same output), so that the ranks stay in step with
no latents ever exchanged; only rank 0 decodes the video.

The ranks form a mesh (cfg, ring, ulysses): a CFG pair exchanges its noise predictions over the
`cfg` dimension, and within each half the context-parallel ranks split the sequence.
"""

import contextlib
import dataclasses
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, ParallelConfig, WanTransformer3DModel
from diffusers.hooks import HookRegistry
from torch._C._distributed_c10d import TCPStore  # torch.distributed re-exports it, untyped
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from serve_app.config import ModelSpec, ParallelDegrees
from serve_app.engine.adapters import Adapters
from serve_app.engine.errors import GenerationCancelled, LoraRefused, VideoNotSplittable
from serve_app.engine.model import LoadedModel
from serve_app.engine.pipeline import MAX_SEQUENCE_LENGTH, PipelineRunner, Prompts
from serve_app.engine.speedups import CFG_HOOK, BatchedGuidance, beneath_offload_hook
from serve_app.messages import GenerationRequest

MESH_DIMS = ("cfg", "ring", "ulysses")
# A collective that waits longer than this for a rank fails (a rank that died mid-job, one that
# never joined); well above a denoising step of the largest video.
COLLECTIVE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Rank:
    """This process's place in its gang."""

    rank: int
    degrees: ParallelDegrees
    device: torch.device
    mesh: DeviceMesh

    @property
    def leader(self) -> bool:
        """Rank 0: the Serve replica, which encodes the prompts, decodes and reports."""
        return self.rank == 0


def rendezvous(host: str, port: int, world: int, leader: bool) -> TCPStore:
    """The gang's meeting point: rank 0 holds it (`port` 0: any free one, read back as `.port`),
    the others connect to it."""
    # The ranks join it in init_process_group (`join`): rank 0 must not wait for them here, before it starts them.
    return TCPStore(
        host, port, world, is_master=leader, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S), wait_for_workers=False
    )


def join(store: TCPStore, rank: int, degrees: ParallelDegrees, device: torch.device) -> Rank:
    """Join the gang's process group (NCCL on GPUs, gloo on the CPU) and build its mesh; returns once
    every rank has joined."""
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # each rank sees its own GPU as its first
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=store,
        rank=rank,
        world_size=degrees.world,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    mesh = init_device_mesh(device.type, (degrees.cfg, degrees.ring, degrees.ulysses), mesh_dim_names=MESH_DIMS)
    return Rank(rank=rank, degrees=degrees, device=device, mesh=mesh)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: LoadedModel, rank: Rank) -> LoadedModel:
    """The loaded model with its transformer split as `rank.degrees` say: context parallelism by
    diffusers, CFG parallel by our guidance hook."""
    transformer = model.t2v.transformer
    degrees = rank.degrees
    if degrees.ulysses * degrees.ring > 1:
        enable_context_parallel(transformer, rank)
    if degrees.cfg == 1:
        return model
    with beneath_offload_hook(transformer):
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.remove_hook(CFG_HOOK, recurse=False)  # the batch of two, if the plan had it
        guidance = CfgParallel(rank.mesh["cfg"].get_group())
        registry.register_hook(guidance, CFG_HOOK)
    # Each rank makes one pass a step: the plan's memory for a batch of two is an upper bound of its own.
    plan = model.plan.model_copy(update={"cfg_batch": False})
    return dataclasses.replace(model, guidance=guidance, plan=plan, options={**model.options, "cfg_batch": False})


def enable_context_parallel(transformer: WanTransformer3DModel, rank: Rank) -> None:
    """diffusers' `enable_parallelism` over the mesh's (ring, ulysses) dimensions.

    Its `_resolve_parallel_config` takes the device to be `rank % accelerator count`, which divides
    by zero on a CPU and is not a gang rank's own GPU: this instance's resolves to our device and
    mesh instead (everything else of enable_parallelism is diffusers' own)."""
    degrees = rank.degrees
    config = ContextParallelConfig(
        ulysses_degree=degrees.ulysses, ring_degree=degrees.ring, mesh=rank.mesh["ring", "ulysses"]
    )

    def resolve(context: ContextParallelConfig) -> ParallelConfig:
        parallel = ParallelConfig(context_parallel_config=context)
        parallel.setup(rank.rank, degrees.world, rank.device, mesh=context.mesh)
        transformer._parallel_config = parallel
        return parallel

    transformer._resolve_parallel_config = resolve
    transformer.enable_parallelism(config=config)


class CfgParallel(BatchedGuidance):
    """Classifier-free guidance over a pair of ranks: the first computes the conditional pass, the
    second the unconditional one, each batch one, and they exchange their predictions (an
    all-gather), so that both continue with both. Everything else is batched guidance's: the
    pipeline's two calls, the second answered with the prediction already there."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        super().__init__()
        self._group = group
        self._unconditional = dist.get_rank(group) == 1

    def both_passes(
        self, hidden_states: torch.Tensor, kwargs: dict[str, Any], negative: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = negative if self._unconditional else kwargs["encoder_hidden_states"]
        mine = self.fn_ref.original_forward(
            hidden_states=hidden_states, **{**kwargs, "encoder_hidden_states": text, "return_dict": False}
        )[0].contiguous()
        passes = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(passes, mine, group=self._group)
        return passes[0], passes[1]


class RankRunner(PipelineRunner):
    """The pipeline runner of one rank of a gang. Rank 0 `run`s requests as a one-GPU replica does
    (its prompts broadcast, its cancel shared); the other ranks `follow` them."""

    def __init__(self, model: LoadedModel, spec: ModelSpec, rank: Rank, adapters: Adapters | None = None) -> None:
        super().__init__(parallelize(model, rank), spec, adapters)
        self.rank = rank
        self.parallelism = rank.degrees.details
        self.description = {**self.description, "parallelism": self.parallelism}

    def check_fits(self, request: GenerationRequest) -> None:
        """Also VideoNotSplittable if the sequence does not divide by the context-parallel degree:
        diffusers splits it in equal parts (its uneven `ulysses_anything` needs uneven all-gathers,
        which gloo lacks)."""
        super().check_fits(request)
        ranks = self.rank.degrees.ulysses * self.rank.degrees.ring
        pipe, (_, patch_height, patch_width) = self.model.t2v, self.model.t2v.transformer.config.patch_size
        frames = (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        spatial = pipe.vae_scale_factor_spatial
        tokens = frames * (request.height // spatial // patch_height) * (request.width // spatial // patch_width)
        if tokens % ranks:
            raise VideoNotSplittable(
                f"This server splits each video over {ranks} GPUs, which needs its {tokens} tokens ((frames - 1) / 4 "
                f"+ 1 = {frames}, times height / 32, times width / 32) to be a multiple of {ranks}. Change the "
                "number of frames, the width or the height by a step."
            )

    @torch.inference_mode()
    def follow(self, request: GenerationRequest) -> None:
        """Denoise `request` with rank 0 (which decodes), until it ends or rank 0 cancels it."""
        # Rank 0 reports a cancel, and an adapter refused (each rank checks the same file the same way).
        with contextlib.suppress(GenerationCancelled, LoraRefused):
            with torch.inference_mode(False):  # as in `run`: PEFT makes trainable parameters
                self._activate_adapters(request)
            self.denoise(request, self.encode_prompts(request), self.step_end(lambda _: None, threading.Event()))

    def encode_prompts(self, request: GenerationRequest) -> Prompts:
        """Rank 0 encodes, and broadcasts the embeddings; the others receive them (padded to
        MAX_SEQUENCE_LENGTH tokens, so their shape is known)."""
        if self.rank.leader:
            prompts = super().encode_prompts(request)
        else:
            shape = (1, MAX_SEQUENCE_LENGTH, self.model.t2v.text_encoder.config.d_model)
            dtype = self.model.t2v.transformer.dtype

            def empty() -> torch.Tensor:
                return torch.empty(shape, dtype=dtype, device=self.rank.device)

            prompts = Prompts(positive=empty(), negative=empty() if request.guidance_scale > 1.0 else None)
        for embeddings in (prompts.positive, prompts.negative):
            if embeddings is not None:
                dist.broadcast(embeddings, src=0)
        return prompts

    def stop_now(self, cancel: threading.Event) -> bool:
        """Whether any rank was cancelled (rank 0 is, by its caller): every rank asks at every step's
        end, and all get the same answer, so all stop at the same step."""
        flag = torch.tensor([int(cancel.is_set())], device=self.rank.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def bytes_per_step(
    config: dict[str, Any], width: int, height: int, frames: int, degrees: ParallelDegrees
) -> dict[str, int]:
    """Bytes one rank sends per denoising step with guidance (two transformer passes), from the
    shapes, in the transformer's bfloat16 (2 bytes a value):

    - Ulysses (degree u, within each CFG half): each self-attention layer exchanges its query, key,
      value and output by all-to-all; a rank holds tokens/u of each, width `heads x head_dim`, and
      keeps 1/u of what it holds: 4 x layers x (tokens/u) x width x (u-1)/u values a pass (the
      cross-attention's keys are the prompt's, whole on every rank: nothing exchanged). Its passes
      a step: 2 with one CFG half (guidance batched or one after the other), 1 with CFG parallel.
      `proj_out`'s gather of the output, patch-sized (latent channels x 4 a token), adds
      (tokens/u) x that x (u-1) a pass.
    - CFG parallel: each rank of the pair sends its noise prediction (the latents' size) once.

    At 1280x704x121: 27,280 tokens (31 latent frames of 44x80, patches of 2x2), width 3072, 30
    layers, latents 48x31x44x80 = 5,237,760 values. Ulysses 2 without CFG parallel:
    2 passes x 4 x 30 x 13,640 x 3072 x 1/2 x 2 bytes = 10.06 GB, plus the gather's 2 x 13,640 x
    192 x 2 = 10.5 MB; CFG parallel: 5,237,760 x 2 = 10.5 MB."""
    latent_frames, latent_height, latent_width = (frames - 1) // 4 + 1, height // 16, width // 16  # the VAE's
    tokens = latent_frames * (latent_height // 2) * (latent_width // 2)
    latent_values = config["out_channels"] * latent_frames * latent_height * latent_width
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    ulysses, value_bytes = degrees.ulysses, 2
    passes = 1 if degrees.cfg == 2 else 2
    local = tokens // ulysses
    attention = passes * 4 * config["num_layers"] * local * hidden * (ulysses - 1) // ulysses * value_bytes
    patch = config["out_channels"] * 4  # values a token of proj_out's output (patches of 1x2x2)
    return {
        "ulysses_all_to_all": attention,
        "ulysses_output_gather": passes * local * patch * (ulysses - 1) * value_bytes,
        "cfg_all_gather": latent_values * value_bytes if degrees.cfg == 2 else 0,
    }

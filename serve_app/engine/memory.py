"""The GPU memory of a generation, measured on the modules themselves.

Each stage (text encoding, image encoding, denoising, VAE decoding) runs on shape-only copies of
the models: PyTorch's meta device, so no weights, no GPU and no arithmetic, only the tensors'
shapes and dtypes. A dispatch mode counts the bytes of the tensors alive at each moment. Three
sizes fix each stage's `StageFit`; with the weights that a plan keeps on the GPU during the stage,
they give the plan's peak at any size (`capacity.Capacity`), and `choose_plan` the fastest plan
that fits the card.
"""

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from diffusers import attention_backend
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from serve_app.capacity import PLANS, Capacity, Plan, Stage, StageFit

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan, ModelMixin, WanTransformer3DModel
    from transformers import PreTrainedModel, UMT5EncoderModel

TEXT_TOKENS = 512  # prompts are padded to it (pipeline.MAX_SEQUENCE_LENGTH)
# Latent-sized float32 tensors the pipeline itself holds while denoising: the latents, the two
# guidance predictions, and UniPC's two previous model outputs and last sample.
PIPELINE_LATENTS = 6
# Frames 9 and 13 are 3 and 4 latent frames: from the third, the causal VAE decoder is in its
# steady state (a constant working set, an output that grows by one latent frame at a time).
FIT_FRAMES = (9, 13)
TRACED_LAYERS = 2


# The output (shape, stride, dtype, device) of a functional operation on meta tensors, by the
# operation and its arguments' shapes, strides, dtypes and values. PyTorch's meta kernels for the
# elementwise operations and norms are Python (0.3-1 ms a call); a tiled VAE decode makes the same
# calls tile after tile: remembered, a 1280x704 plan's traces take under half the time (4.8 s, not 11).
_META_OUTPUTS: dict[tuple[Any, ...], tuple[torch.Size, tuple[int, ...], torch.dtype, torch.device]] = {}
_VALUES = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


def _signature(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a functional operation's output depends on; None for any other (a view, an in-place or
    `out=` operation, several outputs, an argument that is not a tensor or a plain value)."""
    schema = getattr(func, "_schema", None)
    if (
        schema is None
        or len(schema.returns) != 1
        or str(schema.returns[0].type) != "Tensor"
        or any(item.alias_info is not None for item in (*schema.arguments, *schema.returns))
    ):
        return None

    def key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (value.shape, value.stride(), value.storage_offset(), value.dtype, value.device)
        if isinstance(value, list | tuple):
            return tuple(key(item) for item in value)
        if isinstance(value, _VALUES):
            return (type(value), value)
        raise TypeError

    try:
        return (func, key(args), key(sorted(kwargs.items())))
    except TypeError:
        return None


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that the operations run under it create, while they
    live, and keeps the peak. Views and in-place results share an input's storage: not new."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        signature = _signature(func, args, kwargs)
        if signature in _META_OUTPUTS:
            shape, stride, dtype, device = _META_OUTPUTS[signature]
            out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        else:
            out = func(*args, **kwargs)
            if signature is not None and out.device.type == "meta" and _dense(out):
                _META_OUTPUTS[signature] = (out.shape, out.stride(), out.dtype, out.device)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata not in inputs:
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        # PyTorch keeps a storage's Python object as long as the storage lives.
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)


def _dense(tensor: torch.Tensor) -> bool:
    """Whether `tensor` has a storage of its own, exactly the size its shape and strides need (what
    `empty_strided` makes)."""
    made = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)
    return tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == made.untyped_storage().nbytes()


def _efficient_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,  # the models' heads are not grouped
) -> torch.Tensor:
    # Memory-efficient attention, as the GPU's kernels (flash, cuDNN, efficient) run it: the meta
    # device would otherwise take PyTorch's reference path and hold every attention matrix.
    compute_log_sumexp = False
    output: torch.Tensor = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, compute_log_sumexp, dropout_p, is_causal, scale=scale
    )[0]
    return output


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """PyTorch's attention as a memory-efficient kernel, for the models' attention (diffusers'
    `native` backend) and the VAE's; restored afterwards. Runs where no generation does: at replica
    start, before the first job, or in the benchmark's --plan."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = _efficient_attention
    try:
        with attention_backend("native"), torch.no_grad():
            yield
    finally:
        functional.scaled_dot_product_attention = original


def peak_bytes(stage: Callable[[], object]) -> int:
    """The most bytes alive at once while `stage` runs on meta tensors (what it creates)."""
    counter = LiveBytes()
    with _tracing(), counter:
        stage()
    return counter.peak


def meta_copy(module: "ModelMixin | PreTrainedModel", **config: object) -> "ModelMixin | PreTrainedModel":
    """The same model on the meta device (with `config` changed), with each parameter and buffer in
    the original's dtype."""
    with torch.device("meta"):
        if hasattr(module, "from_config"):  # diffusers
            copy = type(module).from_config(module.config, **config)
        else:  # transformers
            copy = type(module)(module.config.__class__(**{**module.config.to_dict(), **config}))
    dtypes = {name: tensor.dtype for name, tensor in (*module.named_parameters(), *module.named_buffers())}
    for name, tensor in (*copy.named_parameters(), *copy.named_buffers()):
        tensor.data = tensor.data.to(dtypes.get(name, tensor.dtype))
    return copy.eval()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def largest_leaf_bytes(module: torch.nn.Module) -> int:
    """Group offload (leaf level) holds about two leaves of a model at a time: the running one and
    the next, copied meanwhile."""
    return max(module_bytes(leaf) for leaf in module.modules() if not list(leaf.children()))


def fit(peak: Callable[[int, int, int], float], width: int, height: int) -> StageFit:
    """The StageFit through a stage's peaks at three sizes: the target's width and height at two
    frame counts, and half its width and height."""
    first, second = FIT_FRAMES
    small_width, small_height = _half(width), _half(height)
    base = peak(width, height, first)
    per_voxel = (peak(width, height, second) - base) / (width * height * (second - first))
    small = peak(small_width, small_height, first)
    per_pixel = (base - small) / (width * height - small_width * small_height) - per_voxel * first
    return StageFit(fixed=base - per_pixel * width * height - per_voxel * width * height * first,
                    per_pixel=per_pixel, per_voxel=per_voxel)  # fmt: skip


def _half(side: int) -> int:
    return max(32, side // 64 * 32)


class MemoryTracer:
    """Stage peaks of one pipeline's models (a text encoder, a transformer, a VAE), traced on their
    meta copies when first asked for, fitted around a target video size."""

    def __init__(
        self,
        text_encoder: "UMT5EncoderModel",
        transformer: "WanTransformer3DModel",
        vae: "AutoencoderKLWan",
        decode: Callable[["AutoencoderKLWan", torch.Tensor], torch.Tensor],
        tiling: Callable[["AutoencoderKLWan", bool], None],
        target: tuple[int, int],
    ) -> None:
        # Two layers of each stack: without gradients a layer frees its activations before the next
        # runs, and after the first (which in UMT5 differs) every layer is alike, so their peak is
        # the whole stack's (tested) for a tenth of the tracing.
        self.text_encoder = meta_copy(text_encoder, num_layers=TRACED_LAYERS)
        self.transformer = meta_copy(transformer, num_layers=TRACED_LAYERS)
        self.vae = meta_copy(vae)
        self._decode = decode
        self._tiling = tiling
        self._target = target
        self.weights = {
            name: module_bytes(module)
            for name, module in (("text_encoder", text_encoder), ("transformer", transformer), ("vae", vae))
        }
        self.largest_leaf = {
            name: largest_leaf_bytes(module)
            for name, module in (("text_encoder", text_encoder), ("transformer", transformer), ("vae", vae))
        }

    # The activations of each stage, fitted once, when first needed.

    @functools.cached_property
    def text_encoding(self) -> StageFit:
        ids = functools.partial(torch.zeros, 1, TEXT_TOKENS, dtype=torch.long, device="meta")
        return StageFit(fixed=peak_bytes(lambda: self.text_encoder(input_ids=ids())))

    @functools.cached_property
    def image_encoding(self) -> StageFit:
        def stage(width: int, height: int, _: int) -> int:
            def run() -> object:
                image = torch.empty(1, 3, 1, height, width, device="meta", dtype=self.vae.dtype)
                return self.vae.encode(image).latent_dist.mode()

            return peak_bytes(run)

        return fit(stage, *self._target)

    @functools.cache  # noqa: B019 (one tracer a replica, kept for its life)
    def denoising(self, batch: int) -> StageFit:
        def stage(width: int, height: int, frames: int) -> int:
            def run() -> object:
                shape = self._latent_shape(width, height, frames)
                _pipeline_latents = [torch.empty(shape, device="meta") for _ in range(PIPELINE_LATENTS)]
                tokens = shape[2] * shape[3] * shape[4] // 4  # the transformer patches 1x2x2
                dtype = self.transformer.dtype
                return self.transformer(
                    hidden_states=torch.empty(batch, *shape[1:], device="meta", dtype=dtype),
                    timestep=torch.empty(batch, tokens, device="meta"),
                    encoder_hidden_states=torch.empty(batch, TEXT_TOKENS, self._text_dim, device="meta", dtype=dtype),
                    return_dict=False,
                )

            return peak_bytes(run)

        return fit(stage, *self._target)

    @functools.cache  # noqa: B019
    def decoding(self, tiled: bool) -> StageFit:
        self._tiling(self.vae, tiled)

        def stage(width: int, height: int, frames: int) -> int:
            latents = functools.partial(torch.empty, self._latent_shape(width, height, frames), device="meta")
            return peak_bytes(lambda: self._decode(self.vae, latents()))

        return fit(stage, *self._target)

    # Plans.

    def capacity(self, plan: Plan, budget_bytes: int) -> Capacity:
        """Each stage's peak under `plan`: its activations plus the weights the plan keeps on the
        GPU while it runs."""
        activations: dict[Stage, StageFit] = {
            "text_encoding": self.text_encoding,
            "image_encoding": self.image_encoding,
            "denoising_batch_1": self.denoising(1),
            **({"denoising_batch_2": self.denoising(2)} if plan.cfg_batch else {}),
            "decoding": self.decoding(plan.vae_tiling),
        }
        return Capacity(
            plan=plan,
            budget_bytes=budget_bytes,
            stages={stage: fit + StageFit(fixed=self._resident(plan, stage)) for stage, fit in activations.items()},
        )

    def _resident(self, plan: Plan, stage: Stage) -> int:
        """Bytes of weights on the GPU during `stage` under `plan`."""
        running = {
            "text_encoding": ["text_encoder"],
            "image_encoding": ["vae"],
            "denoising_batch_1": ["transformer"],
            "denoising_batch_2": ["transformer"],
            "decoding": ["vae"],
        }[stage]
        if plan.memory_mode == "full":
            resident = list(self.weights)
        elif plan.memory_mode == "text_encoder_offload":
            resident = list(self.weights) if stage == "text_encoding" else ["transformer", "vae"]
        elif plan.memory_mode == "model_offload":
            # A model leaves the GPU when the next one in line arrives: the text encoder is still
            # there while the VAE encodes the image, the VAE while the transformer denoises.
            resident = {"image_encoding": ["text_encoder", "vae"], "denoising_batch_1": ["transformer", "vae"],
                        "denoising_batch_2": ["transformer", "vae"]}.get(stage, running)  # fmt: skip
        else:
            return sum(2 * self.largest_leaf[name] for name in running)
        return sum(self.weights[name] for name in resident)

    @property
    def _text_dim(self) -> int:
        text_dim: int = self.transformer.config.text_dim
        return text_dim

    def _latent_shape(self, width: int, height: int, frames: int) -> tuple[int, ...]:
        config = self.vae.config
        channels: int = config.z_dim
        spatial: int = config.scale_factor_spatial
        temporal: int = config.scale_factor_temporal
        return (1, channels, (frames - 1) // temporal + 1, height // spatial, width // spatial)


def choose_plan(
    tracer: MemoryTracer, budget_bytes: int, size: tuple[int, int, int], candidates: tuple[Plan, ...] = PLANS
) -> Capacity | None:
    """The fastest of `candidates` whose peak at `size` (width, height, frames, with guidance and a
    reference image: the largest case) fits `budget_bytes`; None if none does."""
    for plan in candidates:
        capacity = tracer.capacity(plan, budget_bytes)
        if capacity.fits(*size, guidance=True, image=True):
            return capacity
    return None

"""The LoRA adapters loaded into a replica's transformer, with diffusers' `load_lora_weights` and
`set_adapters`: up to `max_loaded` at once, the least recently used deleted first. A request
without adapters runs with none active (`disable_lora`: each adapted layer runs its base layer
alone, as if no adapter had ever been loaded).

Every file is checked against this transformer before it is loaded: a key naming a layer it lacks
or a shape it does not have (an adapter of another base, e.g. Wan2.1-14B) is refused, saying why,
and the refusal is remembered by source and by SHA-256, so that a repeat is refused at once."""

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import torch

from serve_app.common.outbound import OutboundPolicy
from serve_app.config import AppArgs
from serve_app.engine.errors import LoraRefused
from serve_app.engine.lora_files import LoraFile, LoraFiles, LoraPolicy
from serve_app.messages import AppliedLora, LoraChoice

if TYPE_CHECKING:
    from diffusers import WanPipeline

logger = logging.getLogger(__name__)

PREFIX = "transformer."
# Refusals remembered by a replica, the oldest forgotten first.
MAX_REFUSALS = 10_000
# PEFT's own `save_pretrained` names a layer `base_model.model.<layer>`.
_PEFT_PREFIX = "base_model.model."


def lora_adapters(
    args: AppArgs, pipe: "WanPipeline", slots: tuple[str, ...], events: "AdapterEvents | None"
) -> "Adapters":
    """The LoRA adapters of `pipe`'s transformer (`slots`: a compiled one's hot-swap slots), fetched
    as the arguments allow (a gang's ranks each have their own; only rank 0 reports to `events`)."""
    policy = LoraPolicy(
        max_bytes=int(args.max_lora_mb * 2**20),
        cache_bytes=int(args.lora_cache_gb * 2**30),
        fetch_timeout_s=args.lora_fetch_timeout_s,
    )
    files = LoraFiles(args.cache_dir, policy, OutboundPolicy(tuple(args.url_allowlist), tuple(args.url_ports)))
    return Adapters(pipe, files, args.max_loras_per_replica, events, slots)


class AdapterEvents(Protocol):
    """What the adapters report (`common.metrics.AdapterMetrics`, on a Serve replica)."""

    def loaded(self, seconds: float) -> None: ...

    def hit(self) -> None: ...

    def evicted(self) -> None: ...


class Adapters:
    """The adapters of one pipeline's transformer (the text+image pipeline shares it). With
    `slots` (a compiled transformer's, `add_hotswap_slots`), adapters are hot-swapped into them
    and every slot stays active, those a request does not use at scale 0: nothing recompiles."""

    def __init__(
        self,
        pipe: "WanPipeline",
        files: LoraFiles,
        max_loaded: int,
        events: AdapterEvents | None = None,
        slots: tuple[str, ...] = (),
    ) -> None:
        self._pipe = pipe
        self._files = files
        self._max_loaded = len(slots) or max_loaded
        self._events = events
        self._slots = slots
        self._slot_rank = _rank(pipe.transformer, slots[0]) if slots else 0
        self._loaded: OrderedDict[str, str] = OrderedDict()  # SHA-256 -> adapter name, least recent first
        self._refused: OrderedDict[str, str] = OrderedDict()  # a source (as JSON) or a SHA-256 -> why

    @property
    def loaded(self) -> list[str]:
        """The SHA-256 of each adapter loaded, least recently used first."""
        return list(self._loaded)

    def activate(self, loras: tuple[LoraChoice, ...]) -> tuple[list[AppliedLora], float]:
        """Make `loras` the active adapters at their scales (none: all off); what was applied,
        and the seconds spent getting and loading those not yet loaded (0.0 when all were)."""
        if not loras:
            if self._slots:
                set_scales(self._pipe.transformer, dict.fromkeys(self._slots, 0.0))
            elif self._loaded:
                self._pipe.disable_lora()
            return [], 0.0
        started = time.perf_counter()
        names: list[str] = []
        applied, loaded_any = [], False
        for index, lora in enumerate(loras):
            param = f"loras[{index}].path"
            source_key = lora.source.model_dump_json()
            # Remembered by source, and by file (another source of the same file).
            with self._remembered(source_key, param):
                found = self._files.get(lora.source, param)
                if found.sha256 in self._loaded:
                    self._loaded.move_to_end(found.sha256)
                else:
                    with self._remembered(found.sha256, param):
                        self._load(found, param, keep=names)
                    loaded_any = True
            names.append(self._loaded[found.sha256])
            applied.append(AppliedLora(path=lora.path, scale=lora.scale, sha256=found.sha256))
        scales = [lora.scale for lora in loras]
        if self._slots:
            set_scales(
                self._pipe.transformer, {**dict.fromkeys(self._slots, 0.0), **dict(zip(names, scales, strict=True))}
            )
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters(names, scales)
        seconds = time.perf_counter() - started if loaded_any else 0.0
        if self._events is not None:
            self._events.loaded(seconds) if loaded_any else self._events.hit()
        return applied, seconds

    @contextmanager
    def _remembered(self, key: str, param: str) -> Iterator[None]:
        """Refuse at once what was refused before under `key`; remember a refusal of what the
        file is (not of a failed download)."""
        if key in self._refused:
            raise LoraRefused(param, self._refused[key])
        try:
            yield
        except LoraRefused as exc:
            if exc.permanent:
                self._refused[key] = exc.reason
                if len(self._refused) > MAX_REFUSALS:  # sources are the users': bounded
                    self._refused.popitem(last=False)
            raise

    def _load(self, found: LoraFile, param: str, keep: list[str]) -> None:
        state_dict = self._state_dict(found, param)
        self._check_fits(state_dict, param)
        while len(self._loaded) >= self._max_loaded:
            if not self._evict_one(keep):
                break  # every loaded adapter is one of this request's
        name = self._free_slot(param) if self._slots else f"lora_{found.sha256[:16]}"
        started = time.perf_counter()
        try:
            self._pipe.load_lora_weights(state_dict, adapter_name=name, hotswap=bool(self._slots))
        except Exception as exc:
            # A slot half swapped stays free (at scale 0); a new adapter half loaded goes.
            if not self._slots and name in self._pipe.get_list_adapters().get("transformer", []):
                self._pipe.delete_adapters(name)
            logger.warning("%s: %s did not load: %r", param, found.path.name, exc)
            raise LoraRefused(param, f"it does not load into this model: {exc}") from None
        if self._slots:
            remember_unit_scales(self._pipe.transformer, name)
        self._loaded[found.sha256] = name
        logger.info("LoRA %s loaded in %.3f s", found.sha256[:12], time.perf_counter() - started)

    def _free_slot(self, param: str) -> str:
        taken = set(self._loaded.values())
        free = [slot for slot in self._slots if slot not in taken]
        if not free:
            raise LoraRefused(param, f"a replica of this server applies at most {len(self._slots)} adapters at once.")
        return free[0]

    def _evict_one(self, keep: list[str]) -> bool:
        for sha256, name in self._loaded.items():
            if name not in keep:
                if not self._slots:  # a slot is overwritten by the next adapter instead
                    self._pipe.delete_adapters(name)
                del self._loaded[sha256]
                logger.info("LoRA %s evicted", sha256[:12])
                if self._events is not None:
                    self._events.evicted()
                return True
        return False

    def _state_dict(self, found: LoraFile, param: str) -> dict[str, torch.Tensor]:
        """The file's tensors with diffusers' keys: its converters take Kohya, ComfyUI, lightx2v
        and musubi keys; PEFT's own keys get the transformer's prefix."""
        from safetensors.torch import load_file

        raw = load_file(found.path)
        if raw and not any(key.startswith(("diffusion_model.", "lora_unet_", PREFIX)) for key in raw):
            raw = {PREFIX + key.removeprefix(_PEFT_PREFIX): value for key, value in raw.items()}
        try:
            state_dict: dict[str, torch.Tensor] = self._pipe.lora_state_dict(raw)
        except Exception as exc:  # a converter meeting keys it does not know
            raise LoraRefused(param, f"it is not a LoRA of a Wan transformer ({exc}).") from None
        if not state_dict:
            raise LoraRefused(param, "the file holds no LoRA weights.")
        return state_dict

    def _check_fits(self, state_dict: dict[str, torch.Tensor], param: str) -> None:
        """Every key names a layer of this transformer, with its shapes (and, into hot-swap slots,
        a rank they hold)."""
        layers = dict(self._pipe.transformer.named_modules())
        for key, tensor in state_dict.items():
            if self._slots and ".lora_A." in key and tensor.shape[0] > self._slot_rank:
                raise LoraRefused(
                    param, f"its rank is {tensor.shape[0]}, over the {self._slot_rank} of this compiled server."
                )
            layer_name, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
            if not key.startswith(PREFIX) or not layer_name:
                raise LoraRefused(param, f"it is not a LoRA of this model's transformer (key {key!r}).")
            layer = layers.get(layer_name)
            if layer is None:
                raise LoraRefused(param, f"it adapts {layer_name!r}, which this model lacks: a LoRA of another base.")
            inputs, outputs = _features(layer)
            wrong_in = part == "A.weight" and tensor.shape[1] != inputs
            if wrong_in or (part.startswith("B.") and tensor.shape[0] != outputs):
                raise LoraRefused(
                    param,
                    f"{layer_name} of this model maps {inputs} to {outputs} features; the adapter's {part} is "
                    f"{tuple(tensor.shape)}: a LoRA of another base.",
                )


def _features(layer: torch.nn.Module) -> tuple[int, int]:
    layer = getattr(layer, "base_layer", layer)  # a layer an adapter already wraps (PEFT's)
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, torch.nn.modules.conv._ConvNd):
        return layer.in_channels, layer.out_channels
    return -1, -1


def _lora_layers(transformer: torch.nn.Module, name: str) -> Iterator[Any]:
    """The layers that adapter `name` adapts (PEFT's LoRA layers, untyped, hold a `scaling` per adapter)."""
    return (module for module in transformer.modules() if name in getattr(module, "scaling", {}))


def add_hotswap_slots(pipe: "WanPipeline", slots: int, rank: int) -> tuple[str, ...]:
    """Before the transformer is compiled: `slots` adapters of rank `rank`, all zero, on each of its
    linear layers, all active at scale 0, with their scalings as tensors. A later adapter replaces
    a slot's weights in place (diffusers' hot-swap, `enable_lora_hotswap`) and a request sets the
    scalings' values: the compiled graphs stay valid, nothing recompiles. The slots always run (at
    scale 0 they add exact zeros): the cost of swapping adapters under compilation."""
    transformer = pipe.transformer
    linear = [(name, layer) for name, layer in transformer.named_modules() if isinstance(layer, torch.nn.Linear)]
    pipe.enable_lora_hotswap(target_rank=rank)
    names = tuple(f"slot_{index}" for index in range(slots))
    for name in names:
        # Tensors of each slot's own: loading may keep them as the slot's weights, which a swap overwrites.
        zeros = {}
        for layer_name, layer in linear:
            dtype, device = layer.weight.dtype, layer.weight.device
            zeros[f"{PREFIX}{layer_name}.lora_A.weight"] = torch.zeros(
                rank, layer.in_features, dtype=dtype, device=device
            )
            zeros[f"{PREFIX}{layer_name}.lora_B.weight"] = torch.zeros(
                layer.out_features, rank, dtype=dtype, device=device
            )
        pipe.load_lora_weights(zeros, adapter_name=name)
    transformer.set_adapters(list(names), [1.0] * slots)
    for name in names:
        remember_unit_scales(transformer, name)
    set_scales(transformer, dict.fromkeys(names, 0.0))
    return names


def remember_unit_scales(transformer: torch.nn.Module, name: str) -> None:
    """Keep each layer's scaling of adapter `name` at scale 1 (its alpha / rank), as loaded, and
    make it a tensor (a float's change would recompile)."""
    for layer in _lora_layers(transformer, name):
        unit = float(layer.scaling[name])
        layer.unit_scaling = {**getattr(layer, "unit_scaling", {}), name: unit}
        layer.scaling[name] = torch.tensor(unit, device=layer.lora_A[name].weight.device)


def set_scales(transformer: torch.nn.Module, scales: dict[str, float]) -> None:
    """Each adapter's scale, in place in its scaling tensors (unlike `set_adapters`, which makes
    them floats)."""
    for name, scale in scales.items():
        for layer in _lora_layers(transformer, name):
            layer.scaling[name].fill_(layer.unit_scaling[name] * scale)


def _rank(transformer: torch.nn.Module, name: str) -> int:
    rank: int = next(_lora_layers(transformer, name)).r[name]
    return rank

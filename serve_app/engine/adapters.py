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
from typing import TYPE_CHECKING, Protocol

import torch

from serve_app.engine.errors import LoraRefused
from serve_app.engine.lora_files import LoraFile, LoraFiles
from serve_app.messages import AppliedLora, LoraChoice

if TYPE_CHECKING:
    from diffusers import WanPipeline

logger = logging.getLogger(__name__)

PREFIX = "transformer."
# PEFT's own `save_pretrained` names a layer `base_model.model.<layer>`.
_PEFT_PREFIX = "base_model.model."


class AdapterEvents(Protocol):
    """What the adapters report (`common.metrics.AdapterMetrics`, on a Serve replica)."""

    def loaded(self, seconds: float) -> None: ...

    def hit(self) -> None: ...

    def evicted(self) -> None: ...


class Adapters:
    """The adapters of one pipeline's transformer (the text+image pipeline shares it)."""

    def __init__(
        self, pipe: "WanPipeline", files: LoraFiles, max_loaded: int, events: AdapterEvents | None = None
    ) -> None:
        self._pipe = pipe
        self._files = files
        self._max_loaded = max_loaded
        self._events = events
        self._loaded: OrderedDict[str, str] = OrderedDict()  # SHA-256 -> adapter name, least recent first
        self._refused: dict[str, str] = {}  # a source (as JSON) or a SHA-256 -> why

    @property
    def loaded(self) -> list[str]:
        """The SHA-256 of each adapter loaded, least recently used first."""
        return list(self._loaded)

    def activate(self, loras: tuple[LoraChoice, ...]) -> tuple[list[AppliedLora], float]:
        """Make `loras` the active adapters at their scales (none: all off); what was applied,
        and the seconds spent getting and loading those not yet loaded (0.0 when all were)."""
        if not loras:
            if self._loaded:
                self._pipe.disable_lora()
            return [], 0.0
        started = time.perf_counter()
        names, applied, loaded_any = [], [], False
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
        self._pipe.enable_lora()
        self._pipe.set_adapters(names, [lora.scale for lora in loras])
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
            raise

    def _load(self, found: LoraFile, param: str, keep: list[str]) -> None:
        state_dict = self._state_dict(found, param)
        self._check_fits(state_dict, param)
        while len(self._loaded) >= self._max_loaded:
            if not self._evict_one(keep):
                break  # every loaded adapter is one of this request's
        name = f"lora_{found.sha256[:16]}"
        started = time.perf_counter()
        try:
            self._pipe.load_lora_weights(state_dict, adapter_name=name)
        except Exception as exc:
            if name in self._pipe.get_list_adapters().get("transformer", []):
                self._pipe.delete_adapters(name)
            logger.warning("%s: %s did not load: %r", param, found.path.name, exc)
            raise LoraRefused(param, f"it does not load into this model: {exc}") from None
        self._loaded[found.sha256] = name
        logger.info("LoRA %s loaded in %.3f s", found.sha256[:12], time.perf_counter() - started)

    def _evict_one(self, keep: list[str]) -> bool:
        for sha256, name in self._loaded.items():
            if name not in keep:
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
        """Every key names a layer of this transformer, with its shapes."""
        layers = dict(self._pipe.transformer.named_modules())
        for key, tensor in state_dict.items():
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

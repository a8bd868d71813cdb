"""A request's LoRA adapters, checked in the Ingress before anything is queued: a name the
operator registered, or (where `lora_sources` allows it) a hub id or an https URL of a
`.safetensors` file that the outbound checks let through. An unknown name, a source the policy
refuses, a refused URL or an adapter given twice is a 400 naming `loras[i].path`. Whether a file
is a LoRA of the model is known only where it is loaded: the Generator replica says so."""

import re
from urllib.parse import urlsplit

from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import LoraRequest
from serve_app.common.outbound import OutboundPolicy
from serve_app.config import HUB_LORA_PATTERN, AppArgs, lora_location_kind
from serve_app.messages import LoraChoice, LoraSource


async def resolve_loras(
    loras: list[LoraRequest] | None, args: AppArgs, outbound: OutboundPolicy
) -> tuple[LoraChoice, ...]:
    """Each adapter of the request with its source, or InvalidRequest for the first refused."""
    choices: list[LoraChoice] = []
    for index, lora in enumerate(loras or ()):
        param = f"loras[{index}].path"
        if any(choice.path == lora.path for choice in choices):
            raise InvalidRequest(f"{param}: {lora.path!r} is given twice.", param=param)
        source = await _source(lora.path, args, outbound, param)
        choices.append(LoraChoice(path=lora.path, scale=lora.scale, source=source))
    return tuple(choices)


async def _source(path: str, args: AppArgs, outbound: OutboundPolicy, param: str) -> LoraSource:
    allowed = args.lora_sources
    entry = args.lora_registry.get(path)
    if entry is not None and "registered" in allowed:
        kind = lora_location_kind(entry.source)
        return LoraSource(kind=kind, location=entry.source, revision=entry.revision, sha256=entry.sha256)
    if path.startswith("https://") and "url" in allowed:
        if not urlsplit(path).path.endswith(".safetensors"):
            raise InvalidRequest(f"{param}: a LoRA URL names a .safetensors file.", param=param)
        await outbound.check(path, param)
        return LoraSource(kind="url", location=path)
    if re.fullmatch(HUB_LORA_PATTERN, path) and ".." not in path and "hub" in allowed:
        return LoraSource(kind="hub", location=path)
    raise InvalidRequest(f"{param}: {_unknown(path, args)}", param=param)


def _unknown(path: str, args: AppArgs) -> str:
    names = ", ".join(sorted(args.lora_registry)) if "registered" in args.lora_sources else ""
    others = [
        what for kind, what in (("hub", "a Hugging Face id"), ("url", "an https URL")) if kind in args.lora_sources
    ]
    offered = [f"a registered name ({names})"] if names else []
    if not offered and not others:
        return "this server applies no LoRA adapters."
    return f"{path[:100]!r} is not an adapter this server allows: give {' or '.join(offered + others)}."

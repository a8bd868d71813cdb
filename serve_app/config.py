"""Typed application arguments: the `args` of an application in a Serve config file."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


class AppArgs(BaseModel):
    """Arguments of `serve_app.app:build_app`. Unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id or local path of a Diffusers-format Wan2.2 TI2V checkpoint, "
        "or `tiny` for a small random checkpoint built locally (tests, CPU demos).",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="Where the generator runs. `auto` takes the replica's GPU when it has one. "
        "`cpu` also makes generator replicas ask Ray for no GPU.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "wan-serve",
        description="Folder where the `tiny` checkpoint is built once and reused.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve without API keys. Without it, the app refuses to start when neither "
        "WAN_API_KEYS nor WAN_API_KEYS_FILE gives a key. Logged as a warning at every start.",
    )
    max_body_mb: float = Field(25.0, gt=0, description="Largest request body accepted (413 above).")
    max_image_mb: float = Field(
        15.0, gt=0, description="Largest reference image, decoded from base64 or downloaded (413 above)."
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest reference image in pixels, checked before decoding (413 above)."
    )
    image_fetch_timeout_s: float = Field(
        15.0, gt=0, description="Time allowed for downloading an `image_url`, redirects included."
    )
    image_url_allowlist: list[str] = Field(
        default_factory=list,
        description="Host names or IP networks (CIDR) that `image_url` may reach although they are "
        "not public, for example an internal image store. Empty: only public addresses.",
    )
    max_constructor_retries: int = Field(
        3, ge=1, description="How often Ray retries a generator replica whose model fails to load."
    )

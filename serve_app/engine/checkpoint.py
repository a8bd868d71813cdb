"""What a Wan2.2 TI2V checkpoint in Diffusers format must hold, checked where a replica loads it:
every file, before loading, wherever loading cannot download (a folder, or offline the snapshot in
the Hugging Face cache); after loading, that the tokenizer is the text encoder's.

Both faults otherwise pass silently or mislead: without `tokenizer/tokenizer.json` transformers
falls back to a 4-token tokenizer that turns every prompt into unknown tokens, and offline a
missing weight file is reported as missing `.bin` files."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import huggingface_hub
from huggingface_hub.file_download import repo_folder_name

from serve_app.engine.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONFIGS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/tokenizer.json",
    "text_encoder/config.json",
    "transformer/config.json",
    "vae/config.json",
)
# Each model's safetensors: one file, or shards listed in `<name>.index.json` beside it.
WEIGHTS = (
    "text_encoder/model.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
)
# A text encoder's embedding table may be padded past its tokenizer's vocabulary (UMT5's 256,384
# rows for about 256,300 tokens), not by more than this share of it.
VOCABULARY_PADDING = 0.01
KNOWN_TEXT = "a red fox"


def check_files(source: str, revision: str | None = None) -> None:
    """Raise ModelLoadError naming the files missing where loading `source` will read without
    downloading: the folder `source`, or, with HF_HUB_OFFLINE set, the cached snapshot of the hub
    id `source` at `revision` (default `main`). Online, from_pretrained downloads what is missing."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            return
        snapshot = cached_snapshot(source, revision)
        if snapshot is None:
            raise ModelLoadError(
                f"HF_HUB_OFFLINE is set and the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
                f"holds no snapshot of {source!r} at {revision or 'main'}."
            )
        folder = snapshot
    missing = missing_files(folder)
    if missing:
        raise ModelLoadError(f"{folder} lacks {len(missing)} of the checkpoint's files: {', '.join(missing)}.")


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The folder of `repo_id` at `revision` (a branch, a tag or a commit) in the Hugging Face
    cache, or None when the cache has none."""
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit if commit else None
    return snapshot if snapshot and snapshot.is_dir() else None


def missing_files(folder: Path) -> list[str]:
    """The files of the Wan2.2 TI2V layout that `folder` lacks, relative to it."""
    missing = [name for name in CONFIGS if not (folder / name).is_file()]
    for weights in WEIGHTS:
        index = folder / f"{weights}.index.json"
        if (folder / weights).is_file():
            continue
        if not index.is_file():
            missing.append(weights)
            continue
        subfolder = Path(weights).parent
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [str(subfolder / shard) for shard in shards if not (folder / subfolder / shard).is_file()]
    return missing


def check_tokenizer(tokenizer: "PreTrainedTokenizerBase", vocab_size: int) -> None:
    """Raise ModelLoadError unless `tokenizer` fills a text encoder of `vocab_size` embeddings (but
    its padding) and encodes KNOWN_TEXT into known tokens of it that decode back to the text."""
    size = len(tokenizer)
    if size < vocab_size * (1 - VOCABULARY_PADDING):
        raise ModelLoadError(
            f"its tokenizer has {size} tokens and its text encoder {vocab_size} embeddings: the tokenizer is not "
            "the text encoder's (is tokenizer/tokenizer.json missing?)."
        )
    ids = tokenizer(KNOWN_TEXT).input_ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if tokenizer.unk_token_id in ids or max(ids) >= vocab_size or decoded != KNOWN_TEXT:
        raise ModelLoadError(f"its tokenizer encodes {KNOWN_TEXT!r} as {ids}, which decodes to {decoded!r}.")

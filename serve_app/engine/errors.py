"""What a generation can raise besides bugs: the model cannot load, the job was cancelled, the
video does not fit the GPU (before any work, or as it runs out of memory)."""


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded: the generator replica must not start."""


class GenerationCancelled(Exception):
    """Raised in the generator's worker thread, at the end of a denoising step, when the job was
    cancelled."""


class VideoTooLarge(Exception):
    """Raised by a generator replica, before any work, for a video its GPU memory cannot hold; the
    message says the largest it can make."""


class LoraRefused(Exception):
    """A request's adapter that this replica will not apply (`param` names it: `loras[0].path`):
    not a LoRA of this model, not safetensors, over the size cap, or not downloadable. The
    message says why; the replica is unaffected."""

    def __init__(self, param: str, reason: str, permanent: bool = True) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason
        self.message = f"{param}: {reason}"
        self.permanent = permanent  # of the file itself, so worth remembering (not a failed download)


class GpuOutOfMemory(Exception):
    """Raised by a runner whose GPU ran out of memory for a video (torch's OutOfMemoryError), once
    it has freed what the job held: the job fails with advice, and the replica carries on."""


class RankDied(Exception):
    """A rank of a gang (a replica of several GPUs) died or fell out of step: the job fails as
    `replica_died`, and the replica must be replaced."""


class VideoNotSplittable(Exception):
    """Raised by a gang, before any work, for a video whose sequence its context-parallel ranks
    cannot share evenly; the message says what to change."""

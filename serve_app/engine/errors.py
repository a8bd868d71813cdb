"""What a generation can raise besides bugs: the model cannot load, the job was cancelled, the
video does not fit the GPU."""


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded: the generator replica must not start."""


class GenerationCancelled(Exception):
    """Raised in the generator's worker thread, at the end of a denoising step, when the job was
    cancelled."""


class VideoTooLarge(Exception):
    """Raised by a generator replica, before any work, for a video its GPU memory cannot hold; the
    message says the largest it can make."""


class RankDied(Exception):
    """A rank of a gang (a replica of several GPUs) died or fell out of step: the job fails as
    `replica_died`, and the replica must be replaced."""


class VideoNotSplittable(Exception):
    """Raised by a gang, before any work, for a video whose sequence its context-parallel ranks
    cannot share evenly; the message says what to change."""

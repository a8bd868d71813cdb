"""Every error code the service reports (`error.code` of an HTTP error or of a failed job), each
with the HTTP status the Ingress answers it with. Jobs and the generators name a code, never a
status: only the Ingress (`serve_app.api.errors`) reads `http_status`."""

from enum import StrEnum


class ErrorCode(StrEnum):
    http_status: int

    def __new__(cls, code: str, http_status: int) -> "ErrorCode":
        member = str.__new__(cls, code)
        member._value_ = code
        member.http_status = http_status
        return member

    # The request.
    INVALID_REQUEST = "invalid_request", 400
    INVALID_JSON = "invalid_json", 400
    UNAUTHORIZED = "unauthorized", 401
    NOT_FOUND = "not_found", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    PAYLOAD_TOO_LARGE = "payload_too_large", 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable", 416
    # Starlette's own errors of other statuses keep their status (see api.errors).
    HTTP_ERROR = "http_error", 400
    # The state of a job.
    IDEMPOTENCY_CONFLICT = "idempotency_conflict", 409
    VIDEO_NOT_READY = "video_not_ready", 409
    CANCELLED = "cancelled", 409
    # Caps and quotas: retry later (Retry-After).
    TOO_MANY_JOBS = "too_many_jobs", 429
    STORAGE_QUOTA = "storage_quota", 429
    TOO_MANY_STREAMS = "too_many_streams", 429
    TOO_MANY_SUBMISSIONS = "too_many_submissions", 429
    QUEUE_FULL = "queue_full", 503
    STORAGE_FULL = "storage_full", 503
    NOT_READY = "not_ready", 503  # /readyz: no generator has its model loaded yet
    # A generation: refused at submission, or a failed job (what `/predict` answers for it). A video
    # too large for the GPUs is the caller's to change, so a 400.
    VIDEO_TOO_LARGE = "video_too_large", 400
    GENERATION_FAILED = "generation_failed", 500
    GPU_OUT_OF_MEMORY = "gpu_out_of_memory", 500
    TIMEOUT = "timeout", 500
    REPLICA_DIED = "replica_died", 500
    INTERRUPTED = "interrupted", 500
    INTERNAL_ERROR = "internal_error", 500
    # A queued job whose model the server no longer serves (adopted under a new config).
    MODEL_NOT_SERVED = "model_not_served", 500

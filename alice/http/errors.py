"""Turning what went wrong into the right status and body.

OpenAI routes answer `{"error": {message, type, param, code}}`; failures a retry cannot fix
carry `x-should-retry: false` (the openai SDK would otherwise retry 5xx twice, tripling GPU
work) and overload carries `Retry-After`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.responses import JSONResponse

from alice.downloads.civitai import CivitAIError
from alice.downloads.huggingface import HubError
from alice.jobs.queue import Job, JobFailure, JobState, OwnerQueueFull, QueueFull
from alice.models.store import InvalidModelName, LoraNotFound, ModelNotFound
from alice.protocol.generation import InvalidRequest
from alice.protocol.openai import error_body

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "cancelled",
    429: "requests",  # OpenAI's type for a request-rate limit
    500: "server_error",
    503: "server_overloaded",
    502: "upstream_error",
    504: "timeout_error",
}

FAILURE_STATUS = {  # by JobFailure code
    "timeout": 504, "model_not_found": 404, "out_of_memory": 503, "lora_failed": 400,
    "model_does_not_fit": 400,  # this server's card and RAM cannot hold it: the message names what would
    "nan_output": 500,  # the server's precision on its card, not the request: a retry draws NaN again
}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        else:
            headers["x-should-retry"] = "false"
        return headers

    def openai_response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=self.response_headers(),
        )

    def native_response(self) -> JSONResponse:
        """The same error in BentoML's own shape, as `/generate`'s schema errors come."""
        detail = [{"loc": [self.param] if self.param else [], "msg": self.message, "type": self.code or self.type}]
        return JSONResponse(
            {"error": self.message, "detail": detail}, status_code=self.status, headers=self.response_headers()
        )


def validation_error(exc: ValidationError) -> ApiError:
    """A 400 naming the first bad field and pydantic's words for the limit it broke."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if exc.error_count() > 1:
        message += f" (and {exc.error_count() - 1} more problem{'s' if exc.error_count() > 2 else ''})"
    return ApiError(400, message, param=param, code="invalid_value")


def from_exception(exc: Exception) -> ApiError | None:
    """The ApiError for a known request failure, None for anything unexpected."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, InvalidModelName):
        return ApiError(400, str(exc), param="model", code="invalid_model")
    if isinstance(exc, LoraNotFound):
        return ApiError(404, str(exc), param="loras", code="lora_not_found")
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc).strip("'\""), param="model", code="model_not_found")
    if isinstance(exc, (CivitAIError, HubError)):
        return ApiError(502, str(exc), code="upstream_error")
    if isinstance(exc, JobFailure):  # from work done on the worker for a request (loading a model)
        return ApiError(FAILURE_STATUS.get(exc.code, 500), str(exc), code=exc.code)
    if isinstance(exc, OwnerQueueFull):  # this key's share is full, not the server: the SDK retries 429
        return ApiError(429, str(exc), code=exc.code, retry_after_s=exc.retry_after_s)
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code=exc.code, retry_after_s=exc.retry_after_s)
    return None


def job_error(job: Job) -> ApiError | None:
    """Why a finished job has no images, as the client waiting on it should hear it."""
    if job.state is JobState.SUCCEEDED:
        return None
    if job.state is JobState.CANCELLED:
        return ApiError(409, f"job {job.id} was cancelled", code="cancelled")
    status = FAILURE_STATUS.get(job.error_code or "", 500)
    return ApiError(status, job.error or "generation failed", code=job.error_code)

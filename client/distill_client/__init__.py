"""Typed Python client of the distill service: `Client(base_url, api_key)` with `files`, `jobs`
and `models`. No torch, no server code: httpx, tenacity, pydantic and httpx-sse only."""

from distill_client._answer import AnswerStream
from distill_client._archive import UnsafeArchiveError
from distill_client._stream import StreamItem
from distill_client.client import DEFAULT_BASE_URL, Client
from distill_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DistillError,
    InternalServerError,
    MissingAPIKeyError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UnprocessableEntityError,
)
from distill_client.jobs import WaitTimeoutError
from distill_client.types import (
    FINAL_STATUSES,
    Checkpoint,
    Deleted,
    FileObject,
    Job,
    JobErrorInfo,
    JobEvent,
    JobProgress,
    Model,
    Page,
    Prediction,
    Predictions,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL", "FINAL_STATUSES", "APIConnectionError", "APIError", "APITimeoutError",
    "AnswerStream", "AuthenticationError", "BadRequestError", "Checkpoint", "Client",
    "ConflictError", "Deleted", "DistillError", "FileObject", "InternalServerError", "Job",
    "JobErrorInfo", "JobEvent", "JobProgress", "MissingAPIKeyError", "Model", "NotFoundError",
    "Page", "PayloadTooLargeError", "Prediction", "Predictions", "RateLimitError", "StreamItem",
    "UnprocessableEntityError", "UnsafeArchiveError", "Usage", "WaitTimeoutError", "__version__",
]

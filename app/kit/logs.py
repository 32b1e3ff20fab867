"""Log lines as one JSON object each (or coloured console lines for a person), for every process.

structlog renders both our own `structlog` loggers and the standard library's records (uvicorn,
Celery, SQLAlchemy, `logging.getLogger(__name__)` everywhere in the code), so a log shipper reads
one format. Every line carries what is known of its context:

- in the API, `request_id` (the client's `X-Request-ID`, or one made up and echoed back) and,
  once the key is checked, `tenant_id`; on a job's routes, `job_id`;
- in a worker, `job_id`, `attempt` and `tenant_id` of the job it runs.

Those come from context variables. The API keeps one mutable `RequestContext` per request: FastAPI
runs sync dependencies in a copy of the request's context (a thread), so a value *set* there would
not be seen by the access log line written afterwards, while a value written *into* the shared
object is.

`scrub` (the API key redaction) is applied to the finished line, so no field, message or traceback
can carry a secret whatever put it there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

LogFormat = Literal["json", "console"]


@dataclass
class RequestContext:
    """What the logs know of the request being served; filled in as the request goes."""

    request_id: str
    tenant_id: str | None = None
    scope: MutableMapping[str, Any] = field(default_factory=dict)  # the ASGI scope (path params)


current_request: ContextVar[RequestContext | None] = ContextVar("distill_request", default=None)


def set_tenant(tenant_id: str) -> None:
    """Record the authenticated tenant on the current request (no-op outside a request)."""
    request = current_request.get()
    if request is not None:
        request.tenant_id = tenant_id


@contextmanager
def job_context(*, job_id: str, attempt: int | None = None,
                tenant_id: str | None = None) -> Iterator[None]:
    """Every log line inside carries the job (a worker running it)."""
    values = {k: v for k, v in
              {"job_id": job_id, "attempt": attempt, "tenant_id": tenant_id}.items()
              if v is not None}
    with structlog.contextvars.bound_contextvars(**values):
        yield


def _add_request(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    request = current_request.get()
    if request is not None:
        event.setdefault("request_id", request.request_id)
        if request.tenant_id is not None:
            event.setdefault("tenant_id", request.tenant_id)
        # Filled in by the router once the request has been matched to a route.
        job_id = (request.scope.get("path_params") or {}).get("job_id")
        if isinstance(job_id, str):
            event.setdefault("job_id", job_id)
    return event


# uvicorn's access line is `%s - "%s %s HTTP/%s" %d`: kept as the message, and as fields.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def _foreign_args(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    args = event.pop("positional_args", None)
    record = event.get("_record")
    if (record is not None and record.name == "uvicorn.access" and isinstance(args, tuple)
            and len(args) == len(_ACCESS_FIELDS)):
        event.update(zip(_ACCESS_FIELDS, args, strict=True))
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _add_request,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with `scrub` run over each finished line."""

    def __init__(self, *, scrub: Callable[[str], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


def _no_scrub(text: str) -> str:
    return text


def configure_logging(fmt: LogFormat = "json", *, level: int | str = logging.INFO,
                      scrub: Callable[[str], str] = _no_scrub,
                      stream: TextIO | None = None) -> None:
    """Send every log record of this process, in `fmt`, to `stream` (the process's real stderr:
    Celery swaps `sys.stderr` for a logger, which must not log into itself). Idempotent: called
    again (a Celery pool process), it replaces its own handler."""
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "json":
        final.append(structlog.processors.format_exc_info)  # a traceback as one string field
    formatter = _ScrubbingFormatter(
        scrub=scrub, foreign_pre_chain=[*_SHARED, _foreign_args], pass_foreign_args=True,
        processors=[*final, renderer])
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("distill")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "distill"]
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # `warnings.warn` as log lines too, not raw text between them
    # uvicorn's loggers write through the root's handler (uvicorn runs with `log_config=None`).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

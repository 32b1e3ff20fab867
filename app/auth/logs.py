"""Keep API keys out of every log line.

The service itself never logs a key, but a client can put one where a log line echoes it: in a
URL (`?api_key=…` ends up in the access log) or an id. A filter on every handler rewrites any
`dsk_…` token to its public prefix (the one `distill keys list` shows) before it is written.
The JSON lines (`app.kit.logs`) are also scrubbed as a whole once rendered, tracebacks and
fields included.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from app.auth.service import KEY_PREFIX

# The public part: the prefix and 4 characters, as stored in `api_keys.prefix`.
_KEY = re.compile(rf"({re.escape(KEY_PREFIX)}[A-Za-z0-9_\-]{{4}})[A-Za-z0-9_\-]+")
REDACTED = r"\1…[redacted]"
# The loggers whose handlers an API process writes through (uvicorn's own do not propagate).
_LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """`text` with every API key cut to its public prefix."""
    return _KEY.sub(REDACTED, text) if KEY_PREFIX in text else text


class RedactKeys(logging.Filter):
    """Rewrites a record that holds a key; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        if isinstance(record.msg, dict):  # a structlog event: rewrite its values, keep its shape
            record.msg = _redact_arg(record.msg)
            return True
        if KEY_PREFIX not in record.getMessage():
            return True
        # Argument by argument first: uvicorn's access formatter reads `record.args` itself.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redact_arg(arg) for name, arg in record.args.items()}
        if KEY_PREFIX in record.getMessage() and _KEY.search(record.getMessage()):
            record.msg, record.args = redact(record.getMessage()), ()
        return True


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, dict):
        return {name: _redact_arg(value) for name, value in arg.items()}
    if isinstance(arg, list | tuple):
        return type(arg)(_redact_arg(value) for value in arg)
    return arg


def redact_key_logs() -> None:
    """Put the filter on every handler an API or CLI process logs through (idempotent). Called
    once logging is configured: uvicorn sets up its handlers before it loads the app."""
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactKeys) for f in handler.filters):
                handler.addFilter(RedactKeys())

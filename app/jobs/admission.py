"""How many job creations this API process checks at once.

A creation's checks read the job's files and models (labels, vocabularies, sizing a student to
a target, timing a candidate): work on the shared thread pool. Past
`max_concurrent_validations` running at once, a creation waits briefly for a slot and is then
answered 503 with `Retry-After`, instead of taking every thread from the other requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from app.kit.errors import ServiceUnavailable
from app.settings import Settings

_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


class ValidationsBusy(ServiceUnavailable):
    code = "busy"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


def _semaphore(size: int) -> threading.BoundedSemaphore:
    with _lock:
        if size not in _slots:
            _slots[size] = threading.BoundedSemaphore(size)
        return _slots[size]


@contextmanager
def validation_slot(settings: Settings) -> Iterator[None]:
    """Hold one of the process's validation slots while the body runs (ValidationsBusy when
    none frees within `validation_wait_s`)."""
    slots = _semaphore(settings.max_concurrent_validations)
    if not slots.acquire(timeout=settings.validation_wait_s):
        raise ValidationsBusy(
            f"{settings.max_concurrent_validations} job creations are being checked on this "
            "server; retry shortly", retry_after_s=max(1, round(settings.validation_wait_s)))
    try:
        yield
    finally:
        slots.release()

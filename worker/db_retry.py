"""Database writes of a running job, retried through short outages (Postgres restarting, SQLite's
"database is locked"), so that a lost write never turns a healthy job into a failed one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from app.kit.db import session_scope

log = logging.getLogger(__name__)
T = TypeVar("T")


def retry_db(call: Callable[[], T], *, within_s: float) -> T:
    """`call()`, retried with backoff on database errors for up to `within_s` seconds; the last
    error is raised when the database stays away longer."""
    retrying = Retrying(
        retry=retry_if_exception_type(SQLAlchemyError),
        stop=stop_after_delay(within_s),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    return retrying(call)


def write_with_retry(url: str, work: Callable[[Session], T], *, within_s: float) -> T:
    """`work` in a transaction of its own, retried as `retry_db` does."""

    def transaction() -> T:
        with session_scope(url) as session:
            return work(session)

    return retry_db(transaction, within_s=within_s)

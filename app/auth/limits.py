"""Requests per API key per minute: over the allowance, 429 with a Retry-After header."""

from __future__ import annotations

import hashlib

from app.kit.errors import TooManyRequests
from app.kit.rate_limit import RateLimiter
from app.settings import Settings

limiter = RateLimiter()


def _bucket(authorization: str) -> str:
    # Keyed by a hash of the key itself, so that "Bearer k" and "bearer  k" share one bucket,
    # and the plain key is never held.
    key = authorization.partition(" ")[2].strip()
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def charge_refused_job(*, authorization: str, settings: Settings) -> None:
    """A job creation refused after its checks costs `rate_limit_refused_job_cost` requests."""
    limiter.charge(_bucket(authorization), per_minute=settings.rate_limit_per_minute,
                   cost=settings.rate_limit_refused_job_cost)


def check_rate(*, authorization: str, settings: Settings) -> None:
    """Count one request against the (already authenticated) key in `authorization`."""
    bucket = _bucket(authorization)
    per_minute = settings.rate_limit_per_minute
    wait = limiter.acquire(bucket, per_minute=per_minute)
    if wait:
        raise TooManyRequests(
            f"Too many requests with this API key: the limit is {per_minute} per minute "
            f"(DISTILL_RATE_LIMIT_PER_MINUTE); retry after {wait} s.",
            code="rate_limited", retry_after_s=wait,
        )

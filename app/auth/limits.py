"""Requests per API key per minute, in two budgets: the control plane (files, jobs, models; every
route but predict) and predict, whose traffic is orders of magnitude larger per key. Over either
allowance: 429 with a Retry-After header. A call to one never spends the other's budget."""

from __future__ import annotations

import hashlib

from app.kit.errors import TooManyRequests
from app.kit.rate_limit import RateLimiter
from app.settings import Settings

limiter = RateLimiter()  # the control plane's buckets
predict_limiter = RateLimiter()  # predict's own buckets


def key_bucket(authorization: str) -> str:
    """A key's bucket: a hash of the key itself, so that "Bearer k" and "bearer  k" share one,
    and the plain key is never held (the same digest as `auth.service.presented_digest`)."""
    key = authorization.partition(" ")[2].strip()
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def charge_refused_job(*, authorization: str, settings: Settings) -> None:
    """A job creation refused after its checks costs `rate_limit_refused_job_cost` requests."""
    limiter.charge(key_bucket(authorization), per_minute=settings.rate_limit_per_minute,
                   cost=settings.rate_limit_refused_job_cost)


def _acquire(limits: RateLimiter, bucket: str, per_minute: int, setting: str) -> None:
    wait = limits.acquire(bucket, per_minute=per_minute)
    if wait:
        raise TooManyRequests(
            f"Too many requests with this API key: the limit is {per_minute} per minute "
            f"({setting}); retry after {wait} s.",
            code="rate_limited", retry_after_s=wait,
        )


def check_rate(*, authorization: str, settings: Settings) -> None:
    """Count one control-plane request against the (already authenticated) key."""
    _acquire(limiter, key_bucket(authorization), settings.rate_limit_per_minute,
             "DISTILL_RATE_LIMIT_PER_MINUTE")


def check_predict_rate(*, bucket: str, settings: Settings) -> None:
    """Count one predict call against the key whose `key_bucket` is `bucket`."""
    _acquire(predict_limiter, bucket, settings.predict_rate_limit_per_minute,
             "DISTILL_PREDICT_RATE_LIMIT_PER_MINUTE")

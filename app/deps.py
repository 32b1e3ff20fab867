"""FastAPI dependencies: the aliases `SessionDep`, `SettingsDep`, `TenantDep`, and the URL check
every `/v1` route runs (`reject_nul_in_url`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.auth.limits import check_predict_rate, check_rate
from app.auth.service import authenticate, presented_digest
from app.auth.tables import TenantRow
from app.kit.db import session_factory
from app.kit.errors import InvalidRequest
from app.kit.logs import set_tenant
from app.kit.ttl_memo import TTLMemo
from app.settings import Settings, get_settings


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    """A request-scoped session; services commit explicitly, anything else is rolled back."""
    session = session_factory(settings.sqlalchemy_url)()
    try:
        yield session
    finally:
        try:
            session.rollback()
            session.close()
        except DBAPIError:
            # The database went away during the request: the answer (a 503, or one already
            # sent) stands; a rollback that cannot reach the server must not turn it into a
            # reset connection. The dead connection is discarded from the pool.
            session.invalidate()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


# Declares the scheme in OpenAPI (so /docs has an "Authorize" button); the header itself is
# read below, so that a malformed one gets a precise message.
bearer_scheme = HTTPBearer(auto_error=False, description="`distill keys create --tenant NAME`")


def get_tenant(
    session: SessionDep,
    settings: SettingsDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TenantRow:
    """The key's tenant (401 without a valid key; 429 past the key's requests per minute)."""
    tenant = authenticate(session=session, authorization=authorization)
    set_tenant(tenant.id)  # on every log line of the request from here on
    check_rate(authorization=authorization or "", settings=settings)
    return tenant


TenantDep = Annotated[TenantRow, Depends(get_tenant)]


async def current_settings() -> Settings:
    """`get_settings` as an async dependency: no trip to the thread pool on a hot path."""
    return get_settings()


@dataclass(frozen=True)
class TenantRef:
    """A tenant as the predict hot path keeps it in memory (no ORM row)."""

    id: str
    name: str


def _key_memo(request: Request, settings: Settings) -> TTLMemo[str, TenantRef]:
    memo: TTLMemo[str, TenantRef] | None = getattr(request.app.state, "key_memo", None)
    if memo is None:
        memo = request.app.state.key_memo = TTLMemo(settings.lookup_cache_s)
    return memo


def _authenticate_now(settings: Settings, authorization: str | None) -> TenantRef:
    session = session_factory(settings.sqlalchemy_url)()
    try:
        tenant = authenticate(session=session, authorization=authorization)
        return TenantRef(id=tenant.id, name=tenant.name)
    finally:
        session.rollback()
        session.close()


async def predict_tenant(request: Request, settings: Settings) -> TenantRef:
    """The predict hot path's `get_tenant`, called by the route itself (no dependency solving).
    A key seen in the last `DISTILL_LOOKUP_CACHE_S` seconds is
    answered from memory on the event loop (no database, no thread); any other goes through
    `authenticate` as every route does (same errors). Only successes are kept, so a new key works
    at once and a revoked one stops within the TTL. Every call counts against the key's predict
    budget (`DISTILL_PREDICT_RATE_LIMIT_PER_MINUTE`), not the control plane's."""
    authorization = request.headers.get("authorization")
    digest = presented_digest(authorization)  # 401 for a missing or malformed header
    tenant = await _key_memo(request, settings).get_or_load(
        digest, partial(_authenticate_now, settings, authorization))
    set_tenant(tenant.id)
    check_predict_rate(bucket=digest, settings=settings)
    return tenant


CurrentSettingsDep = Annotated[Settings, Depends(current_settings)]


async def reject_nul_in_url(request: Request) -> None:
    """400 for a path or query value holding a NUL character (`%00`): no id or value can, and
    Postgres refuses to compare text that does (a 500 if it got that far). Async: it runs on
    every `/v1` call and needs no thread."""
    for params in (request.path_params, request.query_params):
        for name, value in params.items():
            if "\x00" in str(value):
                raise InvalidRequest(f"{name} contains a NUL character (%00); no valid value does.",
                                     param=name)

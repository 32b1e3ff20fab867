"""FastAPI dependencies: the aliases `SessionDep`, `SettingsDep`, `TenantDep`, and the URL check
every `/v1` route runs (`reject_nul_in_url`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth.limits import check_rate
from app.auth.service import authenticate
from app.auth.tables import TenantRow
from app.kit.db import session_factory
from app.kit.errors import InvalidRequest
from app.kit.logs import set_tenant
from app.settings import Settings, get_settings


def get_session(settings: Annotated[Settings, Depends(get_settings)]) -> Iterator[Session]:
    """A request-scoped session; services commit explicitly, anything else is rolled back."""
    session = session_factory(settings.sqlalchemy_url)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


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


def reject_nul_in_url(request: Request) -> None:
    """400 for a path or query value holding a NUL character (`%00`): no id or value can, and
    Postgres refuses to compare text that does (a 500 if it got that far)."""
    for params in (request.path_params, request.query_params):
        for name, value in params.items():
            if "\x00" in str(value):
                raise InvalidRequest(f"{name} contains a NUL character (%00); no valid value does.",
                                     param=name)

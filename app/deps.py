"""FastAPI dependency aliases: `SessionDep`, `SettingsDep`, `TenantDep`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth.limits import check_rate
from app.auth.service import authenticate
from app.auth.tables import TenantRow
from app.kit.db import session_factory
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
    check_rate(authorization=authorization or "", settings=settings)
    return tenant


TenantDep = Annotated[TenantRow, Depends(get_tenant)]

"""API keys: created by the CLI, checked on every `/v1` request. Only SHA-256 hashes are stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.tables import ApiKeyRow, TenantRow
from app.kit.clock import now
from app.kit.errors import Unauthorized
from app.kit.ids import new_id

KEY_PREFIX = "dsk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(*, session: Session, name: str) -> TenantRow:
    """The tenant called `name`, created on first use."""
    tenant = session.scalar(select(TenantRow).where(TenantRow.name == name))
    if tenant is None:
        tenant = TenantRow(id=new_id("tenant"), name=name, created_at=now())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(*, session: Session, tenant_name: str) -> tuple[TenantRow, str]:
    """A new key for `tenant_name` (tenant created if needed); the plain key is returned once."""
    tenant = get_or_create_tenant(session=session, name=tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKeyRow(
            id=new_id("key"),
            tenant_id=tenant.id,
            key_hash=hash_key(key),
            prefix=key[: len(KEY_PREFIX) + 4],
            created_at=now(),
        )
    )
    session.flush()
    return tenant, key


def authenticate(*, session: Session, authorization: str | None) -> TenantRow:
    """The tenant owning the bearer key in an `Authorization` header, or 401."""
    if not authorization:
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' "
            "(create one with `distill keys create --tenant NAME`)."
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    row = session.scalar(
        select(ApiKeyRow).where(
            ApiKeyRow.key_hash == hash_key(key.strip()), ApiKeyRow.revoked_at.is_(None)
        )
    )
    if row is None:
        raise Unauthorized("Unknown or revoked API key.")
    tenant = session.get(TenantRow, row.tenant_id)
    if tenant is None:  # pragma: no cover - FK cascade keeps this from happening
        raise Unauthorized("Unknown or revoked API key.")
    return tenant

"""API keys: created, listed and revoked by the CLI, checked on every `/v1` request.

Only a SHA-256 of each key is stored. A key is found by its hash and the hash then compared with
`hmac.compare_digest`. The database's index lookup compares digests, never the key: the most a
timing difference could tell is how many leading bytes of the caller's own digest match a stored
one, and choosing a key whose digest starts with given bytes is a preimage search, so no timing
oracle on a key remains. Unknown and revoked keys get the same 401.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.auth.tables import ApiKeyRow, TenantRow
from app.kit.clock import now
from app.kit.errors import NotFound, Unauthorized
from app.kit.ids import new_id

log = logging.getLogger(__name__)

KEY_PREFIX = "dsk_"
# `last_used_at` is written at most this often per key: one write per request would turn every
# read into a write (and a lock wait in embedded SQLite).
LAST_USED_RESOLUTION_S = 60.0
_UNAUTHORIZED = "Unknown or revoked API key."


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


def list_keys(*, session: Session, tenant_name: str) -> list[ApiKeyRow]:
    """The tenant's keys, oldest first, revoked ones included (404 for an unknown tenant)."""
    tenant = session.scalar(select(TenantRow).where(TenantRow.name == tenant_name))
    if tenant is None:
        raise NotFound(f"No tenant named {tenant_name!r}.", param="tenant")
    query = (select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant.id)
             .order_by(ApiKeyRow.created_at, ApiKeyRow.id))
    return list(session.scalars(query))


def revoke_key(*, session: Session, key_id: str) -> tuple[ApiKeyRow, bool]:
    """Revoke a key at once (its next request is a 401); (the key, whether this call revoked it:
    False when it already was). 404 for an unknown id."""
    result = session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    row = session.get(ApiKeyRow, key_id, populate_existing=True)
    if row is None:
        raise NotFound(f"No API key with id {key_id!r}.", param="key_id")
    return row, bool(result.rowcount)  # type: ignore[attr-defined]


def presented_digest(authorization: str | None) -> str:
    """The stored form (SHA-256) of the key in an `Authorization: Bearer <key>` header; 401 for
    a missing or malformed header (no look-up needed to refuse it)."""
    if not authorization:
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' "
            "(create one with `distill keys create --tenant NAME`)."
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    return hash_key(key.strip())


def authenticate(*, session: Session, authorization: str | None) -> TenantRow:
    """The tenant owning the bearer key in an `Authorization` header, or 401."""
    presented = presented_digest(authorization)
    row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == presented))
    if row is None or not hmac.compare_digest(row.key_hash, presented) or row.revoked_at is not None:
        raise Unauthorized(_UNAUTHORIZED)
    tenant = session.get(TenantRow, row.tenant_id)
    if tenant is None:  # pragma: no cover - FK cascade keeps this from happening
        raise Unauthorized(_UNAUTHORIZED)
    _record_use(session, row)
    return tenant


def _record_use(session: Session, row: ApiKeyRow) -> None:
    """Stamp the key's `last_used_at` (at most once a minute), in a transaction of its own: the
    request's session may be rolled back. A failed stamp never fails the request."""
    at = now()
    if row.last_used_at is not None and at - row.last_used_at < LAST_USED_RESOLUTION_S:
        return
    stale = or_(ApiKeyRow.last_used_at.is_(None),
                ApiKeyRow.last_used_at < at - LAST_USED_RESOLUTION_S)
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    try:
        with engine.connect() as conn:
            conn.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id, stale)
                         .values(last_used_at=at))
            conn.commit()
    except SQLAlchemyError as exc:
        log.warning("could not record the use of API key %s: %s", row.id, type(exc).__name__)

"""Public object ids: a prefix and random hex, as users know them from hosted APIs."""

import secrets


def new_id(prefix: str) -> str:
    """A new id such as `job-3f2a…` (96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"

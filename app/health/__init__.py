"""Liveness and readiness checks (`/healthz`, `/readyz`), open without a key."""

"""Shared test factories: toy records, tiny models, API helpers and worker processes."""

#!/usr/bin/env bash
# Create .venv/ and install the project into it (idempotent: skipped when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch is pinned and installed first: a bare `torch` requirement would pull a multi-GB CUDA
# build; 2.13.0 is the CPU wheel this machine kind carries on disk.
TORCH_SPEC=${DISTILL_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.installed
want="$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -x .venv/bin/distill ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "== setting up .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The Python client (`distill_client`, used by the `distill files|jobs|models` commands) is a
# project of its own, installable without the server: `pip install ./client`.
.venv/bin/python -m pip install --quiet -e ./client
echo "$want" > "$stamp"

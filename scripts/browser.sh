#!/usr/bin/env bash
# The dashboard's browser tests drive Debian's chromium through Playwright (which never downloads
# a browser here): install it when missing, as root with apt. `make test` runs this; the demo
# needs no browser. Under CI (CI set) a browser that cannot be installed fails the run, so that
# CI never goes green with no browser test run; elsewhere those tests are skipped, with a note.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium (apt) for the dashboard's browser tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }
  if apt_install || { apt-get update -qq >/dev/null 2>&1 && apt_install; }; then
    exit 0
  fi
fi
if [ -n "${CI:-}" ]; then
  echo "error: /usr/bin/chromium is missing and could not be installed (needs root and apt);" \
       "CI runs the dashboard's browser tests (tests/ui)" >&2
  exit 1
fi
echo "note: /usr/bin/chromium is missing and could not be installed (needs root and apt):" \
     "the dashboard's browser tests (tests/ui) will be skipped" >&2

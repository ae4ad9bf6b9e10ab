#!/usr/bin/env bash
# The test suite, golden cases included, from a fresh clone: sets up .venv,
# runs the linter (ruff, configured in pyproject.toml), then pytest. Extra
# arguments go to pytest. A lint finding fails the run after pytest has run.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
.venv/bin/ruff check .
lint=$?
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no test; that is a failure" >&2
  exit 1
fi
if [ $rc -eq 0 ] && [ $lint -ne 0 ]; then
  echo "scripts/test.sh: ruff found problems (above); that is a failure" >&2
  exit 1
fi
exit $rc

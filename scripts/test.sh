#!/usr/bin/env bash
# The test suite, golden cases included, from a fresh clone: sets up .venv,
# then runs pytest. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no test; that is a failure" >&2
  exit 1
fi
exit $rc

#!/usr/bin/env bash
# The whole immunize job on the bundled sample faces, on a fresh machine:
# sets up .venv, then protects the samples into out/demo against stand-in
# weights of DiffAE and SimSwap's generator (random networks of the real
# architectures: this output protects against NOTHING; it shows the job
# working). About 2-4 minutes on 2 CPU cores. Extra arguments go to
# `leat-jax immunize` (e.g. --iterations 50, --force).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m leat_jax immunize --samples out/demo \
  --stand-in-weights --victims diffae,simswap_G --iterations 5 "$@"

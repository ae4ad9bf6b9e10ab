#!/usr/bin/env bash
# The whole immunize job on the bundled sample faces, on a fresh machine:
# sets up .venv, then protects the samples into out/demo against stand-in
# weights of DiffAE and SimSwap's generator (random networks of the real
# architectures: this output protects against NOTHING; it shows the job
# working). About 2-4 minutes on 2 CPU cores. Extra arguments go to
# `leat-jax immunize` (e.g. --iterations 50, --force). At its end it prints
# the command that evaluates this output on the deepfake pipelines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m leat_jax immunize --samples out/demo \
  --stand-in-weights --victims diffae,simswap_G --iterations 5 "$@"
echo
echo "Next, what this output does to every deepfake pipeline (stand-in weights again, so the numbers"
echo "mean nothing; about 16 minutes on 2 CPU cores, add --pipelines simswap,icface for about 3.5 minutes):"
echo "  .venv/bin/leat-jax evaluate --samples out/demo"

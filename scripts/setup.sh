#!/usr/bin/env bash
# Create .venv at the repository root (once) and install leat-jax with its
# test extras. Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.leat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# The real facenet-pytorch 2.6.0 wheel, for the MTCNN converter test
# (tests/test_mtcnn.py): fetched once into .cache/wheels (ignored by git),
# kept only if its sha256 is the one recorded beside the shipped weights.
# Offline, or on a mismatch, set-up goes on and the test falls back (and says so).
wheels=.cache/wheels
wheel=$wheels/facenet_pytorch-2.6.0-py3-none-any.whl
want=$(.venv/bin/python -c 'import json; print(json.load(open("leat_jax/faces/weights/mtcnn/meta.json"))["source_wheel_sha256"])')
if [ ! -f "$wheel" ]; then
  mkdir -p "$wheels"
  .venv/bin/python -m pip download -q --no-deps --timeout 15 --retries 1 -d "$wheels" facenet-pytorch==2.6.0 \
    >/dev/null 2>&1 || echo "setup: warning: could not download facenet-pytorch 2.6.0 (offline?); the MTCNN converter test will use its round trip" >&2
fi
if [ -f "$wheel" ] && [ "$(.venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$wheel")" != "$want" ]; then
  echo "setup: warning: $wheel does not have the recorded sha256 $want; removed" >&2
  rm -f "$wheel"
fi

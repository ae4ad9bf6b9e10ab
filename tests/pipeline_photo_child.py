"""A child process for the photo tests: ``leat-jax`` with the photo tests' fake face detector.

Usage: python -m tests.pipeline_photo_child ARGS...   (as ``leat-jax ARGS...``)

A child can run with another count of forced host devices than the test
process, which JAX fixes at its start.
"""
from __future__ import annotations

import sys

from leat_jax.cli import main
from leat_jax.pipeline import photos
from tests.test_pipeline_photos import FakeDetector

if __name__ == "__main__":
    photos.default_detector = FakeDetector
    raise SystemExit(main(sys.argv[1:]))

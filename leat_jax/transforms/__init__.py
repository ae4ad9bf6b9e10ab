"""Differentiable image transforms (expectation over transformations): what an upload and a deepfaker's
re-alignment do to a protected photo, per image, jittable and vmappable, on HWC float32 in [-1, 1].

A chain is a tuple of ``Transform`` (a kind and its parameter ranges), read from text by ``parse``;
``apply_chain(chain, key, image)`` draws every parameter from ``key`` and applies the kinds in order.
"""

from leat_jax.transforms.chain import apply_chain
from leat_jax.transforms.spec import ROBUST_DEFAULT, Transform, TransformSpecError, parse, to_text

__all__ = ["ROBUST_DEFAULT", "Transform", "TransformSpecError", "apply_chain", "parse", "to_text"]

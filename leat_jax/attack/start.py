"""A learned start of the attack: one universal perturbation, known by the digest of its array.

``AttackConfig.start`` holds a ``LearnedStart``; the config is a static
argument of jitted functions, so the start hashes and compares by its digest
(and jitter), never by the array. The array becomes a constant of the
compiled attack. Loading it from a file is the pipeline's work.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

# Keyed uniform noise around the learned start, as a fraction of eps: each image still starts apart from the
# universal perturbation (benchmarks/RESULTS.md, "Learned start", measured 0, 0.25 and 1).
DEFAULT_JITTER = 0.25


def array_digest(array: np.ndarray) -> str:
    """The first 16 hex digits of sha256 over the shape and the float32 little-endian bytes."""
    a = np.ascontiguousarray(array, dtype="<f4")
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedStart:
    """A universal perturbation to start every image's attack from.

    Attributes:
      perturbation: (H, W, 3) float32 at its reference size; resized to each
        image (bilinear) and projected. Kept as a read-only copy.
      jitter: radius of the keyed uniform noise added per image, as a fraction
        of eps (0: every image starts at the resized perturbation itself).
      digest: ``array_digest(perturbation)``, computed; the start's identity.
      source: the file it was read from, if any (recorded in reports so a
        later run can read it again); not part of its identity.
    """

    perturbation: np.ndarray
    jitter: float = DEFAULT_JITTER
    digest: str = dataclasses.field(default="", init=False)
    source: str | None = None

    def __post_init__(self):
        a = np.array(self.perturbation, dtype=np.float32)
        if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 1:
            raise ValueError(f"a learned start must be an (H, W, 3) array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("a learned start must be finite, it holds NaN or infinity")
        if not isinstance(self.jitter, (int, float)) or isinstance(self.jitter, bool) or not 0 <= self.jitter <= 1:
            raise ValueError(f"the jitter of a learned start must be a number within 0..1, got {self.jitter!r}")
        a.setflags(write=False)
        object.__setattr__(self, "perturbation", a)
        object.__setattr__(self, "jitter", float(self.jitter))
        object.__setattr__(self, "digest", array_digest(a))

    @property
    def bound(self) -> float:
        """``|u|_inf``, the largest absolute entry."""
        return float(np.max(np.abs(self.perturbation)))

    def label(self) -> str:
        """``learned:DIGEST`` (and ``@jitter`` when not the default): the start in reports and digests."""
        jitter = "" if self.jitter == DEFAULT_JITTER else f"@{self.jitter:g}"
        return f"learned:{self.digest}{jitter}"

    def __eq__(self, other):
        return isinstance(other, LearnedStart) and (self.digest, self.jitter) == (other.digest, other.jitter)

    def __hash__(self):
        return hash((self.digest, self.jitter))

    def __repr__(self):
        return f"LearnedStart({self.label()}, shape={self.perturbation.shape})"

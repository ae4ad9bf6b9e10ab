"""Attack configuration: one frozen dataclass, every default documented."""
from __future__ import annotations

import dataclasses
import hashlib
import json

ENSEMBLES = ("normalized", "sum", "mean_loss")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """LEAT's PGD, in the [-1, 1] image convention of Ruiz et al. and CMUA.

    Attributes:
      eps: L-infinity bound of the perturbation (0.05 in [-1, 1] is about
        6.4/255 of the 8-bit range).
      step: size of each sign step.
      iterations: number of PGD steps.
      ensemble: how per-victim input gradients combine, per image:
        ``normalized`` (LEAT's Normalized Gradient Ensemble: each gradient
        divided by its own L2 norm plus ``norm_floor``, then summed),
        ``sum`` (raw gradients summed) or ``mean_loss`` (gradient of the
        victims' averaged loss).
      norm_floor: added to each gradient norm so a vanishing gradient does
        not divide by zero.
      random_start: start from uniform noise in [-eps, eps] (keyed per image
        by (seed, image id)); else from zero.
      record_history: also return every victim's latent distance before each
        step (iterations x victims per image).
      compute_dtype: ``float32``, or ``bfloat16`` for weights and activations
        (losses, norms and the perturbation stay float32).
    """

    eps: float = 0.05
    step: float = 0.01
    iterations: int = 50
    ensemble: str = "normalized"
    norm_floor: float = 1e-12
    random_start: bool = True
    record_history: bool = False
    compute_dtype: str = "float32"

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if not self.step > 0:
            raise ValueError(f"step must be positive, got {self.step}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative integer, got {self.iterations}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {self.ensemble!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A stable hash of the settings that change the result."""
        d = self.to_dict()
        d.pop("record_history")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

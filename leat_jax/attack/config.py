"""Attack configuration: one frozen dataclass, every default documented."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from leat_jax import transforms as transforms_mod

ENSEMBLES = ("normalized", "sum", "mean_loss")
COMPUTE_DTYPES = ("float32", "bfloat16")


# Words a transform spec may be instead of a chain.
ROBUST_WORD, NO_TRANSFORMS = "robust", ("", "none")


def chain_of(text: str) -> tuple:
    """A transform spec -> its chain: ``robust`` is ``transforms.ROBUST_DEFAULT``, ``none`` or empty is no chain.

    Raises ``transforms.TransformSpecError`` (a one-line ``ValueError``) on a bad spec.
    """
    text = text.strip()
    if text.lower() in NO_TRANSFORMS:
        return ()
    if text.lower() == ROBUST_WORD:
        return tuple(transforms_mod.ROBUST_DEFAULT)
    return tuple(transforms_mod.parse(text))


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
      transforms: expectation over transformation (EOT): a chain of
        ``leat_jax.transforms.Transform`` (or its text, e.g.
        ``"jpeg:quality=50-95,round8"``; ``robust`` for the default set,
        ``transforms.ROBUST_DEFAULT``; see ``chain_of``) drawn afresh every iteration, per
        image, from (seed, image id, iteration); the loss then reads
        ``E_k(T(x + eta))`` against the clean ``E_k(x)``. Empty: plain LEAT.
      eot_samples: draws of the chain per iteration; each victim's gradient is
        the mean over the draws (the gradient of its mean loss), and those
        means enter the ensemble, so normalisation still sees one gradient per
        victim. Ignored without ``transforms``.
      eot_untransformed: also attack the image as it is, one view beside the
        draws in each victim's mean (keeps more of plain LEAT's distortion on
        the untransformed image). Ignored without ``transforms``.
    """

    eps: float = 0.05
    step: float = 0.01
    iterations: int = 50
    ensemble: str = "normalized"
    norm_floor: float = 1e-12
    random_start: bool = True
    record_history: bool = False
    compute_dtype: str = "float32"
    transforms: tuple = ()
    eot_samples: int = 1
    eot_untransformed: bool = False

    def __post_init__(self):
        if isinstance(self.transforms, str):
            # TOML files, flags and reports carry the chain as text.
            object.__setattr__(self, "transforms", chain_of(self.transforms))
        elif not isinstance(self.transforms, tuple):
            object.__setattr__(self, "transforms", tuple(self.transforms))
        if not all(isinstance(t, transforms_mod.Transform) for t in self.transforms):
            raise ValueError(f"transforms must be Transform objects or their text, got {self.transforms!r}")
        if type(self.eot_samples) is not int or self.eot_samples < 1:
            raise ValueError(f"eot_samples must be a positive integer, got {self.eot_samples!r}")
        if type(self.eot_untransformed) is not bool:
            raise ValueError(f"eot_untransformed must be true or false, got {self.eot_untransformed!r}")
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
        """Plain values (the transform chain as its text), accepted back by ``AttackConfig(**d)``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["transforms"] = transforms_mod.to_text(self.transforms)
        return d

    def digest(self) -> str:
        """A stable hash of the settings that change the result."""
        d = self.to_dict()
        d.pop("record_history")
        if not self.transforms:
            # Plain LEAT keeps the hash it had before EOT existed (manifests stay valid).
            d.pop("transforms")
            d.pop("eot_samples")
        if not (self.transforms and self.eot_untransformed):
            d.pop("eot_untransformed")  # hashes of runs made before the field existed stay valid
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

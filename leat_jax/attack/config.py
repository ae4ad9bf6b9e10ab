"""Attack configuration: one frozen dataclass, every default documented."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from leat_jax import transforms as transforms_mod
from leat_jax.attack.losses import LOSSES
from leat_jax.attack.start import LearnedStart

ENSEMBLES = ("normalized", "normalized_l1", "sum", "mean_loss")
COMPUTE_DTYPES = ("float32", "bfloat16")
# Update rules by name (``attack.updates``) and step-size schedules over the iterations.
UPDATES = ("sign", "mifgsm", "adam")
SCHEDULES = ("constant", "cosine", "linear")
# Fields added after manifests existed: left out of the digest at their defaults, so old digests stay valid.
_LATER_FIELDS = ("update", "momentum", "step_schedule", "losses", "victim_weights", "start")
# Named starts ``AttackConfig.start`` takes besides a ``LearnedStart``: they set ``random_start``.
STARTS = ("random", "zero")


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
        ``normalized_l1`` (the same with L1 norms: the sign step's own
        measure, each victim's first-order share of its best step counted alike),
        ``sum`` (raw gradients summed) or ``mean_loss`` (gradient of the
        victims' mean loss, each loss divided by its value at a zero latent:
        its clean-latent scale; ``ensembles.scaled_mean_loss``).
      norm_floor: added to each gradient norm so a vanishing gradient does
        not divide by zero.
      random_start: start from uniform noise in [-eps, eps] (keyed per image
        by (seed, image id)); else from practically zero: keyed noise of
        ``eps / 100`` (``step.initial_perturbation``), since at exactly zero
        every latent residual, so every gradient, is zero and the attack
        would not move.
      record_history: also return every victim's latent distance before each
        step (iterations x victims per image).
      compute_dtype: ``float32``, or ``bfloat16`` for weights and activations
        (losses, norms and the perturbation stay float32).
      transforms: expectation over transformation (EOT): a chain of
        ``leat_jax.transforms.Transform`` (or its text, e.g.
        ``"jpeg:quality=50-95,round8"``, ``gradient=cubic`` after the quality
        for JPEG's rounding surrogate; ``robust`` for the default set,
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
      update: the step applied to the ensemble direction before the
        projection: ``sign`` (PGD: ``step * sign(g)``), ``mifgsm`` (momentum
        of L1-normalised directions with decay ``momentum``, then a sign
        step), ``adam`` (Adam on the perturbation, rate ``step``), or any
        ``optax.GradientTransformation`` (Python only; its updates are added to
        the perturbation, so ascent is positive, and its own step sizes apply).
        Its state is per image, as everything else.
      momentum: MI-FGSM's decay mu.
      step_schedule: ``step`` over the iterations for the named rules:
        ``constant``, or decaying to 0 (``cosine``, ``linear``; optax schedules).
      losses: per victim name, its loss: ``mse`` (default for victims not
        named), ``cosine``, ``l1`` (``losses.LOSSES``) or a function
        ``(latent, clean) -> scalar``. A dict or pairs; kept as sorted pairs.
      victim_weights: per victim name, its weight in the ensemble (default 1).
        A dict or pairs; kept as sorted pairs.
      start: None (as ``random_start`` says), ``random`` or ``zero`` (set
        ``random_start`` and leave this None), or a ``start.LearnedStart``: a
        universal perturbation resized to each image plus keyed uniform noise
        of ``jitter * eps`` (``step.initial_perturbation``); it overrides
        ``random_start``, may not exceed ``eps``, and counts in the digest by
        the digest of its array.
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
    update: Any = "sign"
    momentum: float = 1.0
    step_schedule: str = "constant"
    losses: Any = ()
    victim_weights: Any = ()
    start: Any = None

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
        if not (isinstance(self.update, str) and self.update in UPDATES or _is_transformation(self.update)):
            raise ValueError(f"update must be one of {', '.join(UPDATES)} or an optax.GradientTransformation, "
                             f"got {self.update!r}")
        if not _is_number(self.momentum) or self.momentum < 0:
            raise ValueError(f"momentum must be a non-negative number, got {self.momentum!r}")
        if self.step_schedule not in SCHEDULES:
            raise ValueError(f"step_schedule must be one of {', '.join(SCHEDULES)}, got {self.step_schedule!r}")
        object.__setattr__(self, "losses", _pairs("losses", self.losses, _check_loss))
        object.__setattr__(self, "victim_weights", _pairs("victim_weights", self.victim_weights, _check_weight))
        self._check_start()

    def _check_start(self) -> None:
        if isinstance(self.start, str) and self.start in STARTS:
            object.__setattr__(self, "random_start", self.start == "random")
            object.__setattr__(self, "start", None)
        elif isinstance(self.start, LearnedStart):
            if self.start.bound > self.eps * (1 + 1e-6):
                raise ValueError(f"start: the learned start reaches {self.start.bound:.6g}, beyond eps = {self.eps:g}")
        elif self.start is not None:
            raise ValueError(f"start must be random, zero or a LearnedStart (load a file with the pipeline), "
                             f"got {self.start!r}")

    def loss_of(self, victim: str):
        """The loss function of the victim named ``victim`` (``(latent, clean) -> scalar``)."""
        loss = dict(self.losses).get(victim, "mse")
        return LOSSES[loss] if isinstance(loss, str) else loss

    def weight_of(self, victim: str) -> float:
        """The ensemble weight of the victim named ``victim``."""
        return float(dict(self.victim_weights).get(victim, 1.0))

    def check_victims(self, names) -> None:
        """A ``ValueError`` naming any victim in ``losses`` or ``victim_weights`` that is not among ``names``."""
        for field in ("losses", "victim_weights"):
            unknown = sorted({n for n, _ in getattr(self, field)} - set(names))
            if unknown:
                raise ValueError(f"{field} names {', '.join(unknown)}, not attacked (victims: {', '.join(names)})")

    def to_dict(self) -> dict:
        """The settings as JSON-ready values (the transform chain as its text, functions and transformations by
        their qualified names), accepted back by ``AttackConfig(**d)`` where they are named."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["transforms"] = transforms_mod.to_text(self.transforms)
        d["update"] = _label(self.update)
        d["losses"] = [[n, _label(v)] for n, v in self.losses]
        d["victim_weights"] = [[n, w] for n, w in self.victim_weights]
        d["start"] = self.start.label() if self.start is not None else None
        return d

    def digest(self) -> str:
        """A stable hash of the settings that change the result.

        Fields added later count only when set, so a default configuration
        keeps its old digest. Functions count by their qualified names.
        """
        d = self.to_dict()
        d.pop("record_history")
        if not self.transforms:
            # Plain LEAT keeps the hash it had before EOT existed (manifests stay valid).
            d.pop("transforms")
            d.pop("eot_samples")
        if not (self.transforms and self.eot_untransformed):
            d.pop("eot_untransformed")  # hashes of runs made before the field existed stay valid
        # A victim given its default loss or weight 1 attacks exactly as one not named: same hash.
        d["losses"] = [[n, v] for n, v in d["losses"] if v != "mse"]
        d["victim_weights"] = [[n, w] for n, w in d["victim_weights"] if w != 1.0]
        for name in _LATER_FIELDS:
            if d[name] in (_DEFAULTS[name], [], ()):
                d.pop(name)
        # Arms whose results changed meaning (issue 19): their old manifests must not match.
        if self.ensemble == "mean_loss":
            d["mean_loss"] = "scaled"
        if not self.random_start and self.start is None:
            d["zero_start"] = "keyed"
        if self.start is not None:
            d.pop("random_start")  # a learned start overrides it
        gradients = [t.word("gradient") for t in self.transforms if t.name == "jpeg"]
        if gradients:
            # the surrogate sets the steps: manifests of another must not match. One name when every JPEG of the
            # chain has the same (as before the chain could choose it: old digests stay), else each in order.
            d["jpeg_gradient"] = gradients[0] if len(set(gradients)) == 1 else gradients
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AttackConfig)}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_transformation(v) -> bool:
    return callable(getattr(v, "init", None)) and callable(getattr(v, "update", None))


def _label(v):
    """A name for a value in JSON: strings as they are, functions and transformations by qualified name."""
    if isinstance(v, str) or _is_number(v):
        return v
    fn = getattr(v, "update", v)
    return f"python:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(v).__qualname__)}"


def _check_loss(victim, loss):
    if not (isinstance(loss, str) and loss in LOSSES or callable(loss) and not isinstance(loss, str)):
        raise ValueError(f"losses: unknown loss {loss!r} for {victim}; known: {', '.join(LOSSES)} or a function")
    return loss


def _check_weight(victim, weight):
    if not _is_number(weight) or weight < 0:
        raise ValueError(f"victim_weights: the weight of {victim} must be a non-negative number, got {weight!r}")
    return float(weight)


def _pairs(field: str, value, check) -> tuple:
    """``value`` (a dict, or pairs as from JSON) as sorted ``(victim, value)`` pairs, each checked."""
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = [(n, v) for n, v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{field} must map victim names to values, got {value!r}") from None
    names = [n for n, _ in pairs]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{field} must map distinct victim names to values, got {value!r}")
    return tuple(sorted(((n, check(n, v)) for n, v in pairs), key=lambda p: p[0]))

"""Steering a fast attack's per-victim weights towards a reference attack, round by round.

A fast attack (few iterations from a learned start) serves some victims
better than others; each victim's *share* is its mean latent distance under
the fast attack over that under a reference attack (the unit). The next
round divides each weight by its share, so an under-served victim gains
weight; sign steps are scale-free, so the weights are normalised to mean 1.
The round kept is the one whose worst-served victim fares best. Pure numpy
over (K,) arrays; running the attacks is the pipeline's (``pipeline.calibrate``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def shares(fast, unit) -> np.ndarray:
    """Each victim's share of the unit: ``fast / unit``.

    Args:
      fast: (K,) mean latent distances under the fast attack.
      unit: (K,) mean latent distances under the reference attack.
    Returns:
      (K,) float64 ratios (infinite or NaN where the unit is 0; ``next_weights`` refuses them).
    """
    fast, unit = np.asarray(fast, np.float64), np.asarray(unit, np.float64)
    if fast.shape != unit.shape or fast.ndim != 1:
        raise ValueError(f"fast and unit distances must be two (K,) arrays, got shapes {fast.shape}, {unit.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return fast / unit


def next_weights(weights, share, digits: int = 3) -> np.ndarray:
    """The next round's weights: each weight divided by its victim's share, normalised to mean 1.

    Args:
      weights: (K,) this round's weights, positive.
      share: (K,) this round's shares (``shares``), positive and finite.
      digits: decimals the weights are rounded to (as they are written and used).
    Returns:
      (K,) float64 weights, mean 1 up to the rounding.
    Raises:
      ValueError: a share or weight that is 0, negative or not finite (no ratio to steer by).
    """
    weights, share = np.asarray(weights, np.float64), np.asarray(share, np.float64)
    if weights.shape != share.shape or weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"weights and shares must be two (K,) arrays, got shapes {weights.shape}, {share.shape}")
    for what, values in (("share", share), ("weight", weights)):
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            raise ValueError(f"victim {int(bad[0])}'s {what} is {float(values[bad[0]])}: steering needs positive, "
                             "finite shares and weights (a victim the unit attack does not move?)")
    raw = weights / share
    return np.round(raw / raw.mean(), digits)


def best_round(round_shares: Sequence) -> int:
    """The round whose smallest share is the highest (ties: the earliest).

    Args:
      round_shares: per round, its (K,) shares.
    Returns:
      That round's index.
    """
    if len(round_shares) == 0:
        raise ValueError("no round to choose from")
    worst = [float(np.min(np.nan_to_num(np.asarray(s, np.float64), nan=-np.inf))) for s in round_shares]
    return int(np.argmax(worst))  # argmax takes the first of equal values

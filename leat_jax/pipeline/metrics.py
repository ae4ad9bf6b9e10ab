"""The evaluation's numbers: disruption (output MSE, CMUA's masked MSE, DSR, Avg-DSR,
E-DSR) and imperceptibility (PSNR, SSIM), as pure numpy float64 functions.

Images are float arrays ``[..., H, W, C]`` in [-1, 1] unless said otherwise;
every function is per image over the trailing three axes and keeps the
leading ones. The paper's exact definitions are not available: each
function's docstring states ours.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

THRESHOLD = 0.05  # Ruiz et al.: an output MSE above this is a successful disruption
MASK_THRESHOLD = 0.5  # CMUA: |clean output - input| summed over channels
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def mse(adv, clean) -> np.ndarray:
    """Per-image ``mean((adv - clean)**2)`` over the last three axes.

    Applied to ``out(x_adv, c)`` and ``out(x, c)``: the pair (image, attribute)
    is disrupted when this is above ``THRESHOLD`` (Ruiz et al. 2020).
    """
    d = np.asarray(adv, np.float64) - np.asarray(clean, np.float64)
    return np.mean(np.square(d), axis=(-3, -2, -1))


def cmua_mask(clean_out, x_in, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """``[..., H, W]`` bool: where the clean output differs from the input by more than ``threshold``
    (absolute difference summed over channels). ``x_in`` must have the output's size."""
    d = np.abs(np.asarray(clean_out, np.float64) - np.asarray(x_in, np.float64)).sum(axis=-1)
    return d > threshold


def masked_mse(adv, clean, mask) -> np.ndarray:
    """CMUA's ``sum((adv - clean)**2 * mask) / (sum(mask) * C)`` per image.

    NaN where the mask is empty (the edit changed nothing visible): such a
    pair counts as not disrupted.
    """
    adv = np.asarray(adv, np.float64)
    clean = np.asarray(clean, np.float64)
    m = np.asarray(mask, np.float64)
    num = np.sum(np.square(adv - clean) * m[..., None], axis=(-3, -2, -1))
    den = np.sum(m, axis=(-2, -1)) * adv.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def disrupted(distance, threshold: float = THRESHOLD) -> np.ndarray:
    """``distance > threshold`` (NaN counts as not disrupted)."""
    d = np.asarray(distance, np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(d, nan=-np.inf) > threshold


def dsr(success) -> float | None:
    """Fraction of (image, attribute) pairs disrupted; None when there are none."""
    s = np.asarray(success, bool)
    return float(s.mean()) if s.size else None


def image_dsr(success) -> float | None:
    """Fraction of images (rows) disrupted for every attribute (columns)."""
    s = np.asarray(success, bool)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        return None
    return float(s.all(axis=1).mean())


def avg_dsr(success: Mapping[str, np.ndarray]) -> float | None:
    """Mean over pipelines of their DSR (pipelines without pairs are left out)."""
    values = [v for v in (dsr(s) for s in success.values()) if v is not None]
    return float(np.mean(values)) if values else None


def e_dsr(success: Mapping[str, np.ndarray]) -> float | None:
    """Fraction of images disrupted, for every attribute, on every pipeline (E-DSR).

    An image counts on a pipeline when it is disrupted for every attribute
    evaluated, whatever the attacker picks. ``success`` maps pipeline -> (images, attributes) bool, the same images
    (rows) in the same order; pipelines without attributes are left out.
    """
    tables = [np.asarray(s, bool) for s in success.values() if np.asarray(s).size]
    if not tables:
        return None
    n = {t.shape[0] for t in tables}
    if len(n) != 1:
        raise ValueError(f"pipelines cover different numbers of images: {sorted(n)}")
    every = np.stack([t.all(axis=1) for t in tables]).all(axis=0)
    return float(every.mean())


def _unit(x) -> np.ndarray:
    return (np.asarray(x, np.float64) + 1.0) / 2.0


def psnr(adv, clean) -> np.ndarray:
    """PSNR in dB of [-1, 1] images, measured on [0, 1] (data range 1); inf when identical."""
    m = mse(_unit(adv), _unit(clean))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / m)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D normalised Gaussian of the SSIM window (the 2-D window is its outer product)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[..., H, W, C]`` with the window ``g`` along H and W."""
    k = g.size
    h = a.shape[-3] - k + 1
    out = sum(g[i] * a[..., i:i + h, :, :] for i in range(k))
    w = a.shape[-2] - k + 1
    return sum(g[i] * out[..., :, i:i + w, :] for i in range(k))


def ssim(adv, clean, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Mean SSIM per image of [-1, 1] images, computed on [0, 1].

    Wang et al. 2004: Gaussian window (11x11, sigma 1.5), K1 = 0.01, K2 = 0.03,
    L = 1, per channel at the positions where the whole window fits ("valid",
    as the authors' ``ssim_index.m``), averaged over positions and channels.
    An image smaller than the window uses the window cut to its size,
    renormalised.
    """
    a, b = _unit(adv), _unit(clean)
    size = min(window, a.shape[-3], a.shape[-2])
    g = gaussian_window(size, sigma)
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    saa = _filter_valid(a * a, g) - mu_a**2
    sbb = _filter_valid(b * b, g) - mu_b**2
    sab = _filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean(axis=(-3, -2, -1))


def summarize(distances: np.ndarray, masked: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """One (pipeline, split) table: (images, attributes) MSE and masked MSE -> its numbers."""
    distances = np.asarray(distances, np.float64)
    masked = np.asarray(masked, np.float64)
    ok = disrupted(distances, threshold)
    ok_m = disrupted(masked, threshold)
    finite_m = masked[np.isfinite(masked)]
    return {
        "pairs": int(distances.size),
        "mean_mse": float(distances.mean()) if distances.size else None,
        "dsr": dsr(ok),
        "image_dsr": image_dsr(ok),
        "mean_masked_mse": float(finite_m.mean()) if finite_m.size else None,
        "empty_masks": int(np.isnan(masked).sum()),
        "masked_dsr": dsr(ok_m),
    }


def aggregate(tables: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float = THRESHOLD) -> dict:
    """Avg-DSR and E-DSR (plain and masked) over pipelines: ``{pipeline: (mse, masked)}`` tables."""
    plain = {k: disrupted(d, threshold) for k, (d, _) in tables.items()}
    masked = {k: disrupted(m, threshold) for k, (_, m) in tables.items()}
    return {"avg_dsr": avg_dsr(plain), "e_dsr": e_dsr(plain),
            "avg_masked_dsr": avg_dsr(masked), "e_masked_dsr": e_dsr(masked)}


def imperceptibility(adv: Sequence[np.ndarray], clean: Sequence[np.ndarray]) -> dict:
    """Mean PSNR (finite values only; ``identical`` counts the others), mean SSIM and largest L-inf."""
    p = np.array([float(psnr(a, c)) for a, c in zip(adv, clean)])
    s = np.array([float(ssim(a, c)) for a, c in zip(adv, clean)])
    linf = max((float(np.abs(np.asarray(a, np.float64) - c).max()) for a, c in zip(adv, clean)), default=None)
    finite = p[np.isfinite(p)]
    return {"psnr": float(finite.mean()) if finite.size else None, "identical": int((~np.isfinite(p)).sum()),
            "ssim": float(s.mean()) if s.size else None, "linf": linf}

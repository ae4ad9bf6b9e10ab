"""LEAT in PyTorch, as a careful PyTorch user would write it: eager, batched.

Same semantics as ``leat_jax.attack`` (eps, step, iterations, random start,
the three ensembles, per-image losses and norms, [-1, 1] images), so the two
can be timed and cross-checked side by side. Images are NCHW here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] NCHW images -> latent (B, ...)


@dataclasses.dataclass(frozen=True)
class TorchAttackConfig:
    eps: float = 0.05
    step: float = 0.01
    iterations: int = 50
    ensemble: str = "normalized"
    norm_floor: float = 1e-12


def per_image_mse(latent: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared latent distance of each image."""
    return (latent - clean).pow(2).flatten(1).mean(1)


def _project(x, eta, eps):
    return (x + eta.clamp(-eps, eps)).clamp(-1, 1) - x


def direction(encoders: Sequence[Encoder], clean, x, eta, config: TorchAttackConfig):
    """(ascent direction, (B, K) losses) at x + eta."""
    eta = eta.detach().requires_grad_(True)
    xe = x + eta
    losses, grads = [], []
    if config.ensemble == "mean_loss":
        per = [per_image_mse(enc(xe), c) for enc, c in zip(encoders, clean)]
        # Per-image mean over victims; the sum over the batch keeps images apart.
        (g,) = torch.autograd.grad(torch.stack(per, 1).mean(1).sum(), eta)
        return g, torch.stack([p.detach() for p in per], 1)
    for enc, c in zip(encoders, clean):
        per = per_image_mse(enc(xe), c)
        (g,) = torch.autograd.grad(per.sum(), eta)
        losses.append(per.detach())
        grads.append(g)
    if config.ensemble == "normalized":
        norms = [g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + config.norm_floor for g in grads]
        return sum(g / n for g, n in zip(grads, norms)), torch.stack(losses, 1)
    return sum(grads), torch.stack(losses, 1)


def attack(encoders: Sequence[Encoder], config: TorchAttackConfig, x: torch.Tensor, eta0: torch.Tensor):
    """PGD from ``eta0`` (the random start, given so runs can be compared).

    Returns (protected images, (B, K) distances at the start, at the end).
    """
    with torch.no_grad():
        clean = [enc(x) for enc in encoders]
    eta = _project(x, eta0, config.eps)
    start = None
    for _ in range(config.iterations):
        g, losses = direction(encoders, clean, x, eta, config)
        if start is None:
            start = losses
        with torch.no_grad():
            eta = _project(x, eta + config.step * g.sign(), config.eps)
    with torch.no_grad():
        xe = x + eta
        end = torch.stack([per_image_mse(enc(xe), c) for enc, c in zip(encoders, clean)], 1)
    return xe, (end if start is None else start), end

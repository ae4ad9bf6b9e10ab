"""The image code leat-jax keeps by hand, against the library that would replace it.

    python -m benchmarks.libraries

SSIM and PSNR (``pipeline.metrics``, numpy float64) against dm-pix (JAX,
float32, eager and jitted), and 16-bit PNG writing (``pipeline.png16``)
against imagecodecs: agreement and best-of-n time, side by side in one run.
No options; ``-h`` prints this.
"""
from __future__ import annotations

import argparse
import time

import dm_pix
import imagecodecs
import jax
import numpy as np

from leat_jax.pipeline import metrics, png16


def best_of(fn, n: int = 5) -> float:
    """Seconds of the fastest of ``n`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pair(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A random [-1, 1] image and a protected-like copy (uniform noise within 0.05)."""
    clean = rng.uniform(-1, 1, (size, size, 3)).astype(np.float32)
    adv = np.clip(clean + rng.uniform(-0.05, 0.05, clean.shape), -1, 1).astype(np.float32)
    return adv, clean


def compare_metrics(size: int, rng) -> None:
    adv, clean = pair(size, rng)
    a, c = (adv + 1) / 2, (clean + 1) / 2
    jitted = jax.jit(dm_pix.ssim)
    ssim = float(metrics.ssim(adv, clean))
    psnr = float(metrics.psnr(adv, clean))
    print(f"{size}px SSIM ours {ssim:.9f}, dm-pix |diff| {abs(ssim - float(dm_pix.ssim(a, c))):.1e}; "
          f"PSNR ours {psnr:.6f} dB, dm-pix |diff| {abs(psnr - float(dm_pix.psnr(a, c))):.1e}")
    t = [best_of(lambda: metrics.ssim(adv, clean)),
         best_of(lambda: jax.block_until_ready(dm_pix.ssim(a, c))),
         best_of(lambda: jax.block_until_ready(jitted(a, c))),
         best_of(lambda: metrics.psnr(adv, clean)),
         best_of(lambda: jax.block_until_ready(dm_pix.psnr(a, c)))]
    print(f"{size}px SSIM ours {t[0] * 1e3:.1f} ms, dm-pix eager {t[1] * 1e3:.1f} ms, jitted {t[2] * 1e3:.1f} ms; "
          f"PSNR ours {t[3] * 1e3:.2f} ms, dm-pix {t[4] * 1e3:.2f} ms")


def compare_png_writing(h: int, w: int, c: int, rng) -> None:
    y, x = np.mgrid[0:h, 0:w]  # smooth gradients plus noise, as a 16-bit scan
    samples = (np.stack([(x * 37 + y * 11 + k * 5000) for k in range(c)], -1) + rng.integers(0, 256, (h, w, c)))
    samples = (samples % 65535).astype(np.uint16)
    ours, lib = png16.encode(samples), imagecodecs.png_encode(samples)
    assert np.array_equal(imagecodecs.png_decode(ours).reshape(h, w, c), samples)
    t_ours, t_lib = best_of(lambda: png16.encode(samples), 3), best_of(lambda: imagecodecs.png_encode(samples), 3)
    print(f"PNG16 write {h}x{w}x{c}: ours {t_ours * 1e3:.0f} ms ({len(ours)} B), "
          f"imagecodecs {t_lib * 1e3:.0f} ms ({len(lib)} B, no ICC profile)")


def main() -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.libraries", description=__doc__.split("\n\n")[0]).parse_args()
    rng = np.random.default_rng(0)
    for size in (256, 1024):
        compare_metrics(size, rng)
    for shape in ((512, 512, 3), (1024, 1024, 4)):
        compare_png_writing(*shape, rng)


if __name__ == "__main__":
    main()

"""The immunize job's host side alone: images per second per core, stage by stage.

    python -m benchmarks.host [--sizes 256,1024] [--images 20]

One thread, so the figures are per core. Per image: read and decode (with
the SHA-256 of the input), build the attack's float input, then, with a
stand-in perturbation of eps in place of the attack: quantise, encode (PNG),
verify (decode what was encoded, measure the bound), write (atomic, synced)
and hash the output. Inputs are PNG and JPEG photos of smooth texture plus
noise (a face-like entropy, not a worst case). Figures go to
``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leat_jax.pipeline import images, writing
from leat_jax.pipeline.job import sha256

EPS = 0.05


def photo(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = 128 + 80 * np.sin(9 * xx + seed)[..., None] * np.cos(7 * yy)[..., None] * np.array([1.0, 0.7, -0.6])
    return np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def encoded(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def one(data: bytes, folder: Path, name: str, rng) -> dict[str, float]:
    """Seconds per stage for one image."""
    t = {}
    start = time.perf_counter()
    image = images.decode(data, 1 << 14)
    sha256(data)
    t["read_decode_hash"] = time.perf_counter() - start
    start = time.perf_counter()
    x = image.model_input()
    protected = np.clip(x + rng.choice([-EPS, EPS], x.shape).astype(np.float32), -1, 1)
    t["float_input"] = time.perf_counter() - start
    start = time.perf_counter()
    levels = images.quantize(image, protected, EPS)
    t["quantise"] = time.perf_counter() - start
    start = time.perf_counter()
    out = images.encode(image, levels, "png")
    t["encode_png"] = time.perf_counter() - start
    start = time.perf_counter()
    written = images.decode_written(out, image)
    assert images.linf(image.levels, written, image.bits) <= EPS + 1e-9
    t["verify"] = time.perf_counter() - start
    start = time.perf_counter()
    writing.write_atomic(folder / f"{name}.png", out, folder, "bench")
    sha256(out)
    t["write_sync_hash"] = time.perf_counter() - start
    return t


def measure(size: int, n: int, fmt: str) -> dict:
    rng = np.random.default_rng(0)
    inputs = [encoded(photo(size, i), fmt) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(data, Path(tmp), str(i), rng) for i, data in enumerate(inputs)]
    stages = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    total = sum(stages.values())
    return {"size": size, "input": fmt.lower(), "images": n, "median_seconds": stages, "seconds_per_image": total,
            "images_per_second_per_core": 1.0 / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        for fmt in ("PNG", "JPEG"):
            print(json.dumps(measure(size, args.images, fmt)), flush=True)


if __name__ == "__main__":
    main()

"""ICface: neutralise the face, then re-animate it with driving pose and action units.

Official inference (``Pix2PixModel.test``), per driving frame:
``neutral = netGN(cat[x, AUN planes])``, ``frame = netG(cat[neutral, AUR planes])``,
both the same ``ResnetGenerator`` class with different weights. Here:

    animate(params, images, attr) = netG(netGN(resize_128(images), NEUTRAL_ATTR), attr)

* ``params``: ``{"neutralizer": netGN, "generator": netG}``
  (``converters.icface.to_params`` / ``generator_to_params``);
* ``images``: source faces, [-1, 1] NHWC (the official loader's range);
* ``attr``: the attribute, a driving frame's 20 normalised values in
  ``victims.icface.ATTRIBUTES`` order, (20,) shared by the batch or (N, 20).

Two deliberate differences from the official test loop, both documented in
``victims.icface``: the neutralizer gets the exact neutral vector (the
official one leaks the driving AUs at 1e-5, a float32-rounding-level effect),
and the neutral face is not detached (the official ``.data`` only matters for
training; an attack through the whole pipeline needs that gradient).
"""
from __future__ import annotations

import csv
from pathlib import Path

import jax
import numpy as np

from leat_jax.deepfakes import Attribute, Deepfake, vmap_over_attributes
from leat_jax.deepfakes.parts import count, load_part
from leat_jax.errors import SetupError
from leat_jax.victims import icface as iv

INPUT_SIZE = iv.INPUT_SIZE  # (128, 128)
ATTRIBUTES = iv.ATTRIBUTES
POSE_SCALE = (0.7, 1.4)  # normalised pose = (radians + 0.7) / 1.4
AU_SCALE = 5.0           # normalised AU = OpenFace intensity (0..5) / 5
# Sampled driving frames stay in the ranges real driving videos show (research/generators.md, ICface):
# pose within +-0.28 rad (normalised [0.3, 0.7]), each AU active with probability 0.3 at intensity up to 3
# (normalised 0.6). Uniform AUs over the whole range describe every muscle fully contracted and overstate disruption.
SAMPLED_POSE_RAD = 0.28
SAMPLED_AU_ACTIVE = 0.3
SAMPLED_AU_MAX = 3.0
# Every this many frames of an OpenFace CSV is a driving attribute, so pose and expression vary.
FRAME_STEP = 10


def neutralize(params_gn, images):
    """The neutral face ``netGN(cat[x128, neutral planes])``, tanh range, NHWC."""
    return iv.apply(params_gn, iv.preprocess(images), iv.NEUTRAL_ATTR)


def reenact(params_g, neutral, attr):
    """``netG(cat[neutral, attr planes])``: the animated face, tanh range, NHWC."""
    return iv.reenact(params_g, neutral, attr)


def _animate(params, images, attr):
    return reenact(params["generator"], neutralize(params["neutralizer"], images), attr)


animate = jax.jit(_animate)
animate.__doc__ = """({"neutralizer", "generator"} params, faces [-1, 1] NHWC, attr (20,) or (N, 20))
-> animated 128 faces in [-1, 1]."""

over_attributes = vmap_over_attributes(_animate)


def driving_vector(pose_rad, au_intensity) -> np.ndarray:
    """OpenFace values -> the 20 normalised numbers ICface reads (float32).

    ``pose_rad``: (pose_Rx, pose_Ry, pose_Rz) in radians, mapped to
    ``(p + 0.7) / 1.4`` (not clipped, as officially); ``au_intensity``: the 17
    ``AU*_r`` intensities (0..5) in ``ATTRIBUTES[3:]`` order, divided by 5.
    Computed in float64 then cast, as the official loader does.
    """
    pose = np.asarray(pose_rad, np.float64)
    au = np.asarray(au_intensity, np.float64)
    if pose.shape[-1] != 3 or au.shape[-1] != len(ATTRIBUTES) - 3:
        raise ValueError(f"expected 3 pose angles and {len(ATTRIBUTES) - 3} AU intensities")
    return np.concatenate([(pose + POSE_SCALE[0]) / POSE_SCALE[1], au / AU_SCALE], axis=-1).astype(np.float32)


# sub-folder -> the `leat-jax convert` model writing it
PARTS = {"icface": "icface", "icface_full": "icface_full"}


def load(folder, seed):
    """``{"neutralizer", "generator"}`` params from ``folder`` (``PARTS``), or stand-ins of seed ``seed`` (None)."""
    if folder is None:
        return {"neutralizer": iv.network().init(seed), "generator": iv.network().init(seed + 1)}
    return {"neutralizer": load_part(folder, "icface"), "generator": load_part(folder, "icface_full")}


def driving_vectors(count: int, seed: int) -> np.ndarray:
    """``count`` driving vectors (count, 20) in the ranges of real driving videos: head pose uniform in
    +-``SAMPLED_POSE_RAD`` per angle, each of the 17 AU intensities active with probability
    ``SAMPLED_AU_ACTIVE``, then uniform in [0, ``SAMPLED_AU_MAX``]."""
    rng = np.random.default_rng(seed)
    pose = rng.uniform(-SAMPLED_POSE_RAD, SAMPLED_POSE_RAD, (count, 3))
    au = rng.uniform(0.0, SAMPLED_AU_MAX, (count, 17)) * (rng.random((count, 17)) < SAMPLED_AU_ACTIVE)
    return driving_vector(pose, au)


def read_openface(path) -> np.ndarray:
    """An OpenFace 2.x ``FeatureExtraction`` CSV -> its frames' driving vectors (frames, 20).

    Columns are found by name (``ATTRIBUTES``; OpenFace pads names with spaces), not by position, since
    OpenFace's output flags move them. A one-line ``SetupError`` naming the file when it cannot be used.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise SetupError(f"{path}: cannot read the driving CSV ({getattr(e, 'strerror', None) or e})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [a for a in ATTRIBUTES if a not in header]
    if missing:
        raise SetupError(f"{path}: not an OpenFace CSV with AU intensities and pose (no {', '.join(missing[:3])})")
    cols = [header.index(a) for a in ATTRIBUTES]
    try:
        values = np.asarray([[float(r[c]) for c in cols] for r in rows[1:] if r], np.float64)
    except (ValueError, IndexError):
        raise SetupError(f"{path}: a row of the driving CSV is short or not numeric") from None
    if not len(values):
        raise SetupError(f"{path}: the driving CSV has no frame")
    return driving_vector(values[:, :3], values[:, 3:])


def _csv_attributes(section, count_needed: int) -> list:
    """Every ``frame_step``-th frame of the section's ``driving`` CSVs, in order, as attributes."""
    paths = section["driving"]
    paths = [paths] if isinstance(paths, str) else paths
    step = section.get("frame_step", FRAME_STEP)
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or type(step) is not int or step < 1:
        raise SetupError("[icface] driving must be a CSV path or a list of them, frame_step a positive integer")
    frames = [Attribute(f"{Path(p).name} frame {i}", v) for p in paths for i, v in enumerate(read_openface(p))
              if i % step == 0]
    if len(frames) < count_needed:
        raise SetupError(f"[icface] {count_needed} driving frames asked for, the CSVs give {len(frames)} "
                         f"(every {step}th frame)")
    return frames[:count_needed]


def attributes(section, folder, params, images, seed):
    """Counts of driving vectors, default ``known = 2``, ``unknown = 2``: frames of real driving videos when the
    section names OpenFace CSVs (``driving = "a.csv"`` or a list, paths absolute or relative to the working
    folder; every ``frame_step``-th frame, default ``FRAME_STEP``, known first), else sampled with ``seed``
    (the section's ``seed``, default the run's) by ``driving_vectors``."""
    k, u = count(section, "known", 2, "icface"), count(section, "unknown", 2, "icface")
    if "driving" in section:
        attrs = _csv_attributes(section, k + u)
        return attrs[:k], attrs[k:]
    s = section.get("seed", seed)
    if type(s) is not int:
        raise SetupError(f"[icface] seed must be an integer, got {s!r}")
    v = driving_vectors(k + u, s)
    attrs = [Attribute(f"driving vector {i} (seed {s})", v[i]) for i in range(k + u)]
    return attrs[:k], attrs[k:]


def check(section, folder, names):
    """The section's counts, seed and driving CSVs (numpy only: no network)."""
    attributes(section, folder, None, [], 0)


DEEPFAKE = Deepfake(
    name="icface",
    apply=animate,
    over_attributes=over_attributes,
    output_size=INPUT_SIZE,
    attribute="driving frame: 20 normalised values (3 head-pose angles, 17 AU intensities)",
    load=load,
    attributes=attributes,
    parts=PARTS,
    check=check,
    settings=("known", "unknown", "driving", "frame_step", "seed"),
)

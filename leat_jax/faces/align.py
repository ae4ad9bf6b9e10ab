"""Where each victim's aligned crop lies in a photo, from a face's five landmarks.

Every victim was trained (and is used by deepfakers) on crops made by its own
official alignment rule. Given MTCNN's five points (left eye, right eye,
nose, mouth left, mouth right; (x, y), 0-based pixel centres) and box, this
module gives, per victim, the affine map from *output-crop pixel coordinates*
(u = column, v = row, 0-based pixel centres) to photo pixel coordinates,
plus how the crop is sampled. Numpy only, float64.

Rules:

* ``ffhq`` (e4e, DiffAE): the FFHQ quad (research/mtcnn.md section 6) from
  the eye centres and mouth corners, warped to the square crop exactly as
  PIL's ``transform(QUAD, BILINEAR)`` samples it: output pixel (u, v) reads
  the photo at ``c + x((2u+1)/T - 1) + y((2v+1)/T - 1)``.
* ``simswap`` (simswap_id, simswap_G): SimSwap's 224 alignment
  (``insightface_func/utils/face_align_ffhqandnewarc.py``, mode 'None'): the
  least-squares similarity (scikit-image's ``SimilarityTransform.estimate``,
  i.e. Umeyama without reflection) from the landmarks onto each of its five
  112-pixel pose templates scaled by 224/112, keeping the template with the
  smallest summed point error; ``cv2.warpAffine`` then samples the photo at
  ``M^-1 (u, v)`` with bilinear weights and black outside the photo.
* ``icface`` (ICface): the official ``image_crop.py`` takes dlib's CNN face
  box, enlarges it 1.6x about its centre, moves a top/left edge that falls
  outside back to 0 (keeping the size), lets the bottom/right run off (the
  slice is cut there), and stretches that crop to 128x128 (via an area resize
  to height 256, then a bicubic resize). No landmark alignment at all. We
  have MTCNN's box, not dlib's: dlib's boxes are square, MTCNN's taller than
  wide, so we take the square of side (width + height) / 2 about MTCNN's box
  centre as the stand-in for dlib's box, then apply the official rule to it
  literally. The rule is loose anyway (no alignment), and a few pixels of
  box difference is within what ICface meets from dlib itself; this choice
  is not calibrated against dlib (not available here).

Each victim declares its rule (``Victim.crop_rule``, one of the constants
below); a victim without one gets an ``AlignError``, never a default crop.

Antialiasing (``supersample``: sub-samples per output pixel and axis,
averaged, i.e. a box filter over the output pixel's footprint): each rule
follows what its official pipeline does when the face is much larger than the
crop. e4e warps straight to 256 and only shrinks the photo first (Lanczos, by
the integer ``floor(qsize / 256 / 2)``) when that is above 1: we supersample
by that factor then, else not. DiffAE's ``align.py`` warps to 4096 and
Lanczos-shrinks to 256, a fully filtered resampling: we supersample by
``ceil(scale)`` (photo pixels per output pixel). SimSwap's ``cv2.warpAffine``
never filters: no supersampling (the networks see the aliased crop, as in
the official pipeline). ICface's area resize: ``ceil(scale)``. Factors are
rounded up to powers of two and capped at ``MAX_SUPERSAMPLE`` to bound the
number of compiled programs.

Borders: ``reflect`` for the FFHQ rule (the official script reflect-pads a
quad that nears the border; its extra blur-and-median feathering of the
padding is not reproduced), ``constant`` (black) for SimSwap (cv2's
``borderValue=0``), ``edge`` for ICface (its crop never leaves the photo; the
resize repeats edge pixels).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# Bumped when a rule's output for the same landmarks changes (it keys the manifest).
ALIGN_VERSION = "1"
MAX_SUPERSAMPLE = 8
BORDERS = ("reflect", "constant", "edge")

# SimSwap's five 112-pixel pose templates (left profile, left, frontal, right,
# right profile), points in MTCNN's order; face_align_ffhqandnewarc.py.
SIMSWAP_TEMPLATES_112 = np.array([
    [[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]],
    [[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]],
    [[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]],
    [[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]],
    [[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]],
], np.float32).astype(np.float64)  # float32 as the official arrays, then exact in float64

ICFACE_ENLARGE = 1.6


class AlignError(ValueError):
    """Landmarks or a box from which no crop can be made (one line)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """How a victim's crop is made.

    kind: ``ffhq``, ``simswap`` or ``icface`` (module docstring).
    antialias: ``e4e`` (supersample only where e4e's script shrinks), ``full``
      (supersample by the scale) or ``none``.
    border: how samples outside the photo are read (``BORDERS``).
    """

    kind: str
    antialias: str
    border: str


# The rules victims declare (``Victim.crop_rule``).
FFHQ_E4E = Rule("ffhq", "e4e", "reflect")  # e4e's script: shrinks only when the face is 4x the crop or more
FFHQ = Rule("ffhq", "full", "reflect")  # DiffAE's align.py (and a sensible choice for new FFHQ-style victims)
SIMSWAP = Rule("simswap", "none", "constant")
ICFACE = Rule("icface", "full", "edge")


@dataclasses.dataclass(frozen=True)
class Crop:
    """One victim's crop of one face.

    affine: (2, 3) float64, output-crop (u, v, 1) -> photo (x, y).
    size: the crop's (height, width) = the victim's input size.
    supersample: sub-samples per output pixel and axis (1: plain bilinear).
    border: ``BORDERS``.
    """

    affine: np.ndarray
    size: tuple[int, int]
    supersample: int
    border: str

    @property
    def scale(self) -> float:
        """Photo pixels per output pixel (the larger of the two axes)."""
        return float(max(np.hypot(*self.affine[:, 0]), np.hypot(*self.affine[:, 1])))


def rule_for(name: str, rule: Rule | None) -> Rule:
    """``rule``, checked; ``AlignError`` naming victim ``name`` when it declares none."""
    if not isinstance(rule, Rule):
        raise AlignError(f"victim {name} declares no crop rule (Victim.crop_rule, one of leat_jax.faces.align's "
                         f"FFHQ, FFHQ_E4E, SIMSWAP, ICFACE), got {rule!r}")
    return rule


def _check(landmarks) -> np.ndarray:
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
        raise AlignError(f"landmarks must be 5 finite (x, y) points, got shape {lm.shape}")
    return lm


def _rot(v: np.ndarray) -> np.ndarray:
    """v rotated 90 degrees clockwise on screen (y down): (-v_y, v_x)."""
    return np.array([-v[1], v[0]])


def ffhq_frame(landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, x, y): the FFHQ square's centre and half-side vectors (x to the face's right, y down it)."""
    lm = _check(landmarks)
    eye_left, eye_right, mouth_left, mouth_right = lm[0], lm[1], lm[3], lm[4]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot(eye_to_mouth)
    norm = np.hypot(*x)
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    if not norm > 0 or not half > 0:
        raise AlignError("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * half
    y = _rot(x)
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def ffhq_quad(landmarks) -> np.ndarray:
    """(4, 2) corners: top-left, bottom-left, bottom-right, top-right (as the FFHQ script)."""
    c, x, y = ffhq_frame(landmarks)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_affine(landmarks, size: int) -> np.ndarray:
    """Output (u, v) of a ``size`` square crop -> photo (x, y), as PIL's QUAD transform samples it."""
    c, x, y = ffhq_frame(landmarks)
    # src = c + x((2u+1)/T - 1) + y((2v+1)/T - 1)
    a = np.empty((2, 3))
    a[:, 0] = 2.0 * x / size
    a[:, 1] = 2.0 * y / size
    a[:, 2] = c + x * (1.0 / size - 1.0) + y * (1.0 / size - 1.0)
    return a


def similarity_lstsq(src, dst) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation; no reflection)
    minimising the squared distances from it(src) to dst.

    The same optimum as scikit-image's ``SimilarityTransform.estimate``
    (Umeyama): in complex numbers the model is ``dst = a src + b``, linear
    least squares in (a, b).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    s0, d0 = zs - ms, zd - md
    denom = np.vdot(s0, s0).real
    if not denom > 0:
        raise AlignError("degenerate landmarks (all points coincide)")
    a = np.vdot(s0, d0) / denom  # sum(conj(s0) d0) / sum|s0|^2
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine map."""
    lin = np.linalg.inv(m[:, :2])
    return np.concatenate([lin, -(lin @ m[:, 2])[:, None]], axis=1)


def simswap_matrix(landmarks, size: int = 224) -> tuple[np.ndarray, int]:
    """SimSwap's ``estimate_norm`` (mode 'None'): (M photo -> crop, chosen template index)."""
    lm = _check(landmarks)
    best, best_err, best_i = None, np.inf, -1
    for i, template in enumerate(SIMSWAP_TEMPLATES_112 * (size / 112.0)):
        m = similarity_lstsq(lm, template)
        err = np.sum(np.sqrt(np.sum((_apply(m, lm) - template) ** 2, axis=1)))
        if err < best_err:  # strict: the first of equal errors wins, as the official loop
            best, best_err, best_i = m, err, i
    return best, best_i


def simswap_affine(landmarks, size: int = 224) -> np.ndarray:
    """Output (u, v) -> photo (x, y): the inverse of SimSwap's M (cv2.warpAffine's sampling)."""
    return invert(simswap_matrix(landmarks, size)[0])


def icface_box(box, photo_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel rectangle (x0, y0, x1, y1), end exclusive, that ICface's ``image_crop.py`` cuts
    for a detection ``box`` (x1, y1, x2, y2); see the module docstring for the dlib stand-in."""
    b = np.asarray(box, np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise AlignError(f"box must be 4 finite numbers, got shape {b.shape}")
    side = ((b[2] - b[0]) + (b[3] - b[1])) * 0.5
    if not side > 0:
        raise AlignError("degenerate face box")
    # dlib.rectangle holds integers; dcenter() is the float centre of left..right.
    cx, cy = (b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5
    left, top = int(round(cx - side * 0.5)), int(round(cy - side * 0.5))
    right, bottom = left + int(round(side)), top + int(round(side))
    dcx, dcy = (left + right) / 2.0, (top + bottom) / 2.0
    w = int((right - left) * ICFACE_ENLARGE)
    h = int((bottom - top) * ICFACE_ENLARGE)
    x0 = max(int(dcx - int(w / 2.0)), 0)  # np.int of a float truncates
    y0 = max(int(dcy - int(h / 2.0)), 0)
    height, width = photo_hw
    x1, y1 = min(x0 + w, width), min(y0 + h, height)  # numpy slicing cuts at the end
    if x1 <= x0 or y1 <= y0:
        raise AlignError("the face box lies outside the photo")
    return x0, y0, x1, y1


def icface_affine(box, photo_hw: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Output (u, v) of the (h, w) crop -> photo (x, y): the cut rectangle stretched to the crop
    (pixel centres at half-pixel positions, as a resize)."""
    x0, y0, x1, y1 = icface_box(box, photo_hw)
    sx, sy = (x1 - x0) / size[1], (y1 - y0) / size[0]
    return np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])


def _pow2_at_most(n: float) -> int:
    n = max(1, int(math.ceil(n - 1e-9)))
    return min(MAX_SUPERSAMPLE, 1 << (n - 1).bit_length())


def supersample(rule: Rule, scale: float, size: tuple[int, int]) -> int:
    """Sub-samples per output pixel and axis for a crop at ``scale`` photo pixels per output pixel."""
    if rule.antialias == "none":
        return 1
    if rule.antialias == "e4e":
        shrink = int(math.floor(scale * 0.5))  # floor(qsize / output_size * 0.5), qsize = scale * T
        return _pow2_at_most(shrink) if shrink > 1 else 1
    return _pow2_at_most(scale)


def crop(name: str, size: tuple[int, int], landmarks, box, photo_hw: tuple[int, int], rule: Rule | None = None) -> Crop:
    """The crop of victim ``name`` (input ``size``, crop ``rule``) for one face; ``AlignError`` if none can be made."""
    rule = rule_for(name, rule)
    size = (int(size[0]), int(size[1]))
    if rule.kind == "ffhq":
        if size[0] != size[1]:
            raise AlignError(f"the FFHQ rule makes square crops; victim {name} takes {size}")
        affine = ffhq_affine(landmarks, size[0])
    elif rule.kind == "simswap":
        if size[0] != size[1]:
            raise AlignError(f"SimSwap's alignment makes square crops; victim {name} takes {size}")
        affine = simswap_affine(landmarks, size[0])
    else:
        affine = icface_affine(box, photo_hw, size)
    scale = float(max(np.hypot(*affine[:, 0]), np.hypot(*affine[:, 1])))
    return Crop(affine, size, supersample(rule, scale, size), rule.border)

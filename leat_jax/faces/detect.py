"""MTCNN face detection, exactly as facenet-pytorch 2.6.0 runs it.

``MTCNN().detect(img, landmarks=True)`` with its defaults (min_face_size 20,
thresholds (0.6, 0.7, 0.7), factor 0.709, select_largest=True): an image
pyramid through P-Net, crops through R-Net, then O-Net, with box regression,
squaring and three flavours of non-maximum suppression between the stages.

The networks run in JAX (float32, highest matmul precision), compiled once per
input shape: P-Net once per pyramid-level size, R-Net/O-Net per batch bucket
(the crop count padded up to a power of two). The bookkeeping runs on the host
in numpy float64, rule for rule as the package does it; the rules that are
easy to "fix" by mistake are the package's, kept on purpose:

* level sizes are ``int(side * scale + 1)`` (floor + 1, not ceil);
* resampling is torch's ``interpolate(mode='area')`` (adaptive average
  pooling, bins may overlap by a pixel), computed here from exact integer
  sums;
* stage-1 cells are taken at ``prob >= t0`` and their boxes floored in
  float32 (the model dtype of the default detector); stages 2-3 keep
  ``prob > t``;
* stage-1 regression uses widths without +1, stages 2-3 with +1;
* crops are not zero padded: a box cut by the border gives a non-square crop,
  stretched to the network's size;
* NMS: torchvision's (areas without +1, IoU > thr suppresses, stable
  descending scores) after stages 1 and 2, the numpy "Min" routine (+1
  areas, overlap / smaller area, kept when <= thr) after stage 3;
* landmarks are decoded from the O-Net box *before* its regression;
* nothing is clipped to the image.

One upstream bug is not kept: a box lying wholly outside the image gives an
empty crop, which the package drops while keeping the box, so the later
crops no longer line up with their boxes; here the box goes with its crop.

Coordinates: boxes (x1, y1, x2, y2) in the package's (roughly 1-based)
convention, landmarks as 0-based pixel coordinates (x, y).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.models import mtcnn

SHIPPED = Path(__file__).resolve().parent / "weights" / "mtcnn"
NPZ = "params.npz"
MIN_BUCKET, MAX_BUCKET = 16, 512  # R-Net/O-Net batch sizes: powers of two in between
# Grid (1/SNAP px) of the boxes and landmarks the immunize pipeline crops from:
# far finer than any crop can show, far coarser than XLA's last-bit noise.
SNAP = 64


@dataclasses.dataclass(frozen=True)
class DetectConfig:
    """Detection settings; the defaults are facenet-pytorch's ``MTCNN()``.

    ``min_face_size``: the smallest face (pixels) the pyramid looks for.
    ``thresholds``: face probability cut of P-Net (>=), R-Net (>), O-Net (>).
    ``factor``: scale step between pyramid levels.
    ``snap``: boxes and landmarks rounded to multiples of 1 / ``snap`` px (0:
    not rounded, as the package). XLA's CPU code for the same network gives
    last-bit differences with the process's device count; rounding keeps
    them out of the crops (``SNAP`` is what ``immunize --faces detect`` uses).
    """

    min_face_size: int = 20
    thresholds: tuple = (0.6, 0.7, 0.7)
    factor: float = 0.709
    snap: int = 0

    def __post_init__(self):
        if not self.min_face_size > 0:
            raise ValueError(f"min_face_size must be positive, got {self.min_face_size}")
        if len(self.thresholds) != 3:
            raise ValueError(f"thresholds needs three values (P-Net, R-Net, O-Net), got {self.thresholds}")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {self.factor}")
        if type(self.snap) is not int or self.snap < 0:
            raise ValueError(f"snap must be a non-negative integer, got {self.snap!r}")


class Faces(NamedTuple):
    """Detected faces, largest box first (as ``select_largest=True`` orders them)."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in photo pixels
    probs: np.ndarray  # (n,) float32 O-Net face probability
    landmarks: np.ndarray  # (n, 5, 2) float32 (x, y): left eye, right eye, nose, mouth left, mouth right


# ------------------------------------------------------------------ pyramid


def pyramid_scales(height: int, width: int, config: DetectConfig = DetectConfig()) -> list[float]:
    """The package's scales: repeated float64 multiplication, not ``m * factor**k``."""
    m = 12.0 / config.min_face_size
    minl = min(height, width) * m
    scales, s = [], m
    while minl >= 12:
        scales.append(s)
        s *= config.factor
        minl *= config.factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """A pyramid level's size: floor + 1 (an integral side * scale gets one more row)."""
    return int(height * scale + 1), int(width * scale + 1)


# ---------------------------------------------------------------- resampling


def area_bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bins: output i averages inputs start[i] .. end[i] - 1."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def row_cumsum(image: np.ndarray) -> np.ndarray:
    """Cumulative sums of an integer image down its rows, with a leading zero row.

    uint8 sums fit int32 for any side below 8 million pixels.
    """
    out = np.zeros((image.shape[0] + 1, *image.shape[1:]), np.int32)
    np.cumsum(image, axis=0, dtype=np.int32, out=out[1:])
    return out


def area_resize(csum: np.ndarray, top: int, left: int, height: int, width: int, size: tuple[int, int]) -> np.ndarray:
    """``interpolate(mode='area')`` of the window (top, left, height, width) of an image, float64.

    ``csum`` is the image's ``row_cumsum``. Bin sums are exact integers, so the
    result is each bin's exact mean, rounded once.
    """
    (rs, re), (cs, ce) = area_bins(height, size[0]), area_bins(width, size[1])
    rows = csum[top + re, left:left + width].astype(np.int64) - csum[top + rs, left:left + width]
    c2 = np.zeros((size[0], width + 1, rows.shape[-1]), np.int64)
    np.cumsum(rows, axis=1, out=c2[:, 1:])
    sums = c2[:, ce] - c2[:, cs]
    return sums / ((re - rs)[:, None, None] * (ce - cs)[None, :, None]).astype(np.float64)


def normalise(x: np.ndarray) -> np.ndarray:
    """``(v - 127.5) * 0.0078125`` in float32, as the package does it in the model dtype."""
    return (x.astype(np.float32) - np.float32(127.5)) * np.float32(0.0078125)


# ----------------------------------------------------------------------- NMS


def nms_torchvision(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision's ``nms``: the kept indices, highest score first.

    Areas ``(x2 - x1) * (y2 - y1)`` (no +1); boxes visited in stable descending
    score order; a box is suppressed by a kept one when IoU > ``threshold``.
    (Above 1000 boxes torchvision's CPU ``batched_nms`` loops per class and
    re-sorts, which can only reorder exact score ties.)
    """
    boxes = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: nan, never suppresses
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > threshold]] = True
    return np.asarray(keep, np.int64)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "Min") -> np.ndarray:
    """The package's ``nms_numpy``: the kept indices, highest score first.

    Areas and intersections with +1; overlap = intersection over the smaller
    area (``"Min"``) or over the union (``"Union"``); a box survives while its
    overlap with every kept box is <= ``threshold``. Visiting order is
    ``np.argsort(scores)`` (numpy's default sort) from the end, as upstream.
    """
    if method not in ("Min", "Union"):
        raise ValueError(f"method must be 'Min' or 'Union', got {method!r}")
    boxes = np.asarray(boxes, np.float64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(np.asarray(scores))
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            o = inter / (np.minimum(area[i], area[rest]) if method == "Min" else area[i] + area[rest] - inter)
        order = rest[o <= threshold]
    return np.asarray(keep, np.int64)


# ----------------------------------------------------------- box arithmetic


def regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Shift each side by offset x width/height (stage 1: no +1; stages 2-3: +1)."""
    out, one = boxes.copy(), 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def square(boxes: np.ndarray) -> np.ndarray:
    """``rerec``: the square of side max(w, h) (no +1) about each box's centre."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def crop_windows(boxes: np.ndarray, height: int, width: int):
    """The package's ``pad``: boxes truncated toward zero, clamped to the image.

    Returns (top, left, rows, cols) of each 0-based crop and the mask of boxes
    with a non-empty crop (1-based inclusive x..ex, y..ey upstream).
    """
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], width), np.minimum(b[:, 3], height)
    ok = (ey > y - 1) & (ex > x - 1)
    return y - 1, x - 1, ey - y + 1, ex - x + 1, ok


def _crops(csum, boxes, height, width, size):
    top, left, rows, cols, ok = crop_windows(boxes, height, width)
    batch = [normalise(area_resize(csum, t, lf, r, c, (size, size)))
             for t, lf, r, c in zip(top[ok], left[ok], rows[ok], cols[ok])]
    return (np.stack(batch) if batch else np.zeros((0, size, size, 3), np.float32)), ok


# --------------------------------------------------------------- the nets


@jax.jit
def _pnet(params, x):
    with jax.default_matmul_precision("highest"):
        return mtcnn.pnet().apply(params, x)


@jax.jit
def _rnet(params, x):
    with jax.default_matmul_precision("highest"):
        return mtcnn.rnet().apply(params, x)


@jax.jit
def _onet(params, x):
    with jax.default_matmul_precision("highest"):
        return mtcnn.onet().apply(params, x)


def bucket(n: int) -> int:
    """The padded batch size for ``n`` crops: a power of two in [MIN_BUCKET, MAX_BUCKET]."""
    return min(MAX_BUCKET, max(MIN_BUCKET, 1 << max(0, n - 1).bit_length()))


def _batched(net, params, x: np.ndarray):
    """``net`` over crops in chunks of MAX_BUCKET, each padded to its bucket (few compiled shapes)."""
    outs = []
    for start in range(0, len(x), MAX_BUCKET):
        chunk = x[start:start + MAX_BUCKET]
        padded = np.zeros((bucket(len(chunk)), *chunk.shape[1:]), np.float32)
        padded[:len(chunk)] = chunk
        outs.append([np.asarray(o)[:len(chunk)] for o in net(params, padded)])
    return [np.concatenate(parts) for parts in zip(*outs)]


# ---------------------------------------------------------------- pipeline


def _as_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 RGB, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image: expected shape (H, W, 3) RGB (or greyscale (H, W)), got {image.shape}")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _stage1(params, csum, height, width, config):
    """P-Net over the pyramid: squared candidate boxes (x1, y1, x2, y2, score)."""
    thr = np.float32(config.thresholds[0])  # compared in the model dtype, as the package does
    levels = []
    for s in pyramid_scales(height, width, config):
        hs, ws = level_size(height, width, s)
        x = normalise(area_resize(csum, 0, 0, height, width, (hs, ws)))[None]
        reg, prob = (np.asarray(a)[0] for a in _pnet(params, x))
        rows, cols = np.nonzero(prob[:, :, 1] >= thr)  # row-major, as torch's nonzero
        # Cell -> box in the photo, floored in float32 (the default detector's dtype: at
        # scale 0.6, 3 / 0.6 floors to 4 in float32 and to 5 in float64).
        s32, step, cell = np.float32(s), mtcnn.PNET_STRIDE, mtcnn.PNET_CELL
        x1 = np.floor((step * cols + 1).astype(np.float32) / s32)
        y1 = np.floor((step * rows + 1).astype(np.float32) / s32)
        x2 = np.floor((step * cols + cell).astype(np.float32) / s32)
        y2 = np.floor((step * rows + cell).astype(np.float32) / s32)
        cand = np.concatenate([np.stack([x1, y1, x2, y2, prob[rows, cols, 1]], 1).astype(np.float64),
                               reg[rows, cols].astype(np.float64)], axis=1)
        levels.append(cand[nms_torchvision(cand[:, :4], cand[:, 4], 0.5)])
    cand = np.concatenate(levels) if levels else np.zeros((0, 9))
    cand = cand[nms_torchvision(cand[:, :4], cand[:, 4], 0.7)]
    boxes = regress(cand[:, :5], cand[:, 5:9], plus_one=False)
    return square(boxes)


def detect_faces(params, image, config: DetectConfig = DetectConfig()) -> Faces:
    """All faces in ``image`` (uint8 RGB, (H, W, 3)) with ``params`` = ``{"pnet", "rnet", "onet"}``."""
    image = _as_rgb(image)
    height, width = image.shape[:2]
    none = Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))
    csum = row_cumsum(image)

    boxes = _stage1(params["pnet"], csum, height, width, config)
    if not len(boxes):
        return none

    # Stage 2: R-Net on 24 x 24 crops of the squared boxes.
    crops, ok = _crops(csum, boxes, height, width, mtcnn.RNET_SIZE)
    boxes = boxes[ok]
    if not len(boxes):
        return none
    reg, prob = _batched(_rnet, params["rnet"], crops)
    keep = prob[:, 1] > np.float32(config.thresholds[1])
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2].astype(np.float64)], axis=1)
    reg = reg[keep].astype(np.float64)
    pick = nms_torchvision(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = square(regress(boxes[pick], reg[pick], plus_one=True))
    if not len(boxes):
        return none

    # Stage 3: O-Net on 48 x 48 crops; landmarks from the box before regression.
    crops, ok = _crops(csum, boxes, height, width, mtcnn.ONET_SIZE)
    boxes = boxes[ok]
    if not len(boxes):
        return none
    reg, lm, prob = _batched(_onet, params["onet"], crops)
    keep = prob[:, 1] > np.float32(config.thresholds[2])
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2].astype(np.float64)], axis=1)
    reg, lm = reg[keep].astype(np.float64), lm[keep].astype(np.float64)
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1
    points = np.stack([w * lm[:, :5] + boxes[:, 0:1] - 1, h * lm[:, 5:] + boxes[:, 1:2] - 1], axis=2)
    boxes = regress(boxes, reg, plus_one=True)
    pick = nms_numpy(boxes[:, :4], boxes[:, 4], 0.7, "Min")
    boxes, points = boxes[pick], points[pick]
    if not len(boxes):
        return none

    # select_largest: by area (no +1), largest first, as the package sorts.
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
    boxes, points = boxes[order], points[order]
    faces = Faces(boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32), points.astype(np.float32))
    return snapped(faces, config.snap) if config.snap else faces


def snapped(faces: Faces, snap: int) -> Faces:
    """``faces`` with boxes and landmarks rounded to the nearest multiple of 1 / ``snap`` px.

    Multiples of a power-of-two fraction are exact in float32, so the rounded
    values survive every later cast. A value within XLA's noise (about 1e-5
    px) of a half-step can still round either way: rare, not impossible.
    """
    def snap_to(a):
        return (np.round(np.asarray(a, np.float64) * snap) / snap).astype(np.float32)

    return Faces(snap_to(faces.boxes), faces.probs, snap_to(faces.landmarks))


# ----------------------------------------------------------------- loading


class Detector:
    """MTCNN parameters (on the default device) and settings; ``detect(image) -> Faces``."""

    def __init__(self, params, config: DetectConfig = DetectConfig()):
        from leat_jax.checkpoints import check_against_template

        check_against_template(params, mtcnn.mtcnn().template, "MTCNN parameters")
        self.params = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))
        self.config = config

    def detect(self, image: np.ndarray) -> Faces:
        """Faces in one uint8 RGB image (H, W, 3); greyscale (H, W) is replicated to RGB."""
        return detect_faces(self.params, image, self.config)


def read_params(folder) -> dict:
    """MTCNN parameters from a folder: the package's ``params.npz`` form or a ``leat-jax convert mtcnn`` output."""
    from leat_jax.checkpoints import CheckpointError, load_params, unflatten

    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(f"{folder}: a file; give a folder made by `leat-jax convert mtcnn SRC DST`")
    if not (folder / NPZ).is_file():
        params, meta = load_params(folder)
    else:
        try:
            with np.load(folder / NPZ, allow_pickle=False) as z:
                params = unflatten({k: z[k] for k in z.files})
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: unreadable MTCNN parameters ({type(e).__name__}: {e})") from None
    if meta.get("model") != "mtcnn":
        raise CheckpointError(f"{folder}: holds {meta.get('model')!r} weights, not 'mtcnn'")
    return params


def load_detector(path=None, config: DetectConfig = DetectConfig()) -> Detector:
    """A detector with the weights in ``path``, or (None) the ones shipped in the package."""
    return Detector(read_params(SHIPPED if path is None else path), config)

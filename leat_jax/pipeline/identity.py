"""The evaluation's identity and face-detection checks: does the protected output still show the clean output's face?

Pixel MSE says an output changed, not that the deepfake failed: a swap can
move every pixel and still show the same person. For each (image, attribute)
pair this module compares the clean output ``out(x, c)`` with the protected
one ``out(x_adv, c)`` in two ways:

* identity: the cosine of their SimSwap ArcFace embeddings
  (``victims.simswap`` identity path, unit vectors); below ``threshold`` the
  pair is identity-disrupted;
* detection: the shipped MTCNN (``faces.detect``) on both; the pair is
  detection-disrupted when the protected output shows no face, or its best
  (largest) box overlaps the clean output's by IoU < ``IOU_THRESHOLD``.

Outputs are (h, w, 3) in [-1, 1]. Clean outputs are measured once per
(pipeline, image), whatever the number of attacks.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from leat_jax import checkpoints
from leat_jax.errors import SetupError
from leat_jax.faces.detect import load_detector
from leat_jax.victims import simswap as sv

# ArcFace-family verifiers accept two faces as one person above a cosine of about 0.3-0.4 at their best LFW
# accuracy (OpenCV's SFace: 0.363); SimSwap's ArcFace has no published operating point, so the lower end:
# a pair counts as disrupted only when a verifier would clearly reject the match (conservative).
IDENTITY_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5  # the usual detection-match criterion (PASCAL VOC)
BATCH = 8  # ArcFace calls are padded to this many outputs: one compilation for any count
STAND_IN = "stand-in"


@jax.jit
def _embed_batch(params, outputs):
    return sv.identity_apply(params, sv.identity_preprocess(outputs))


def embed(params, outputs) -> np.ndarray:
    """Unit ArcFace embeddings (N, 512) float64 of (N, h, w, 3) outputs in [-1, 1], ``BATCH`` at a time."""
    x = np.asarray(outputs, np.float32)
    rows = []
    for i in range(0, len(x), BATCH):
        chunk = x[i:i + BATCH]
        pad = np.zeros((BATCH - len(chunk), *x.shape[1:]), np.float32)
        rows.append(np.asarray(_embed_batch(params, np.concatenate([chunk, pad])), np.float64)[:len(chunk)])
    return np.concatenate(rows) if rows else np.zeros((0, 512))


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays (NaN where a row is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_box(detector, output) -> np.ndarray | None:
    """The largest face box MTCNN finds in an (h, w, 3) output in [-1, 1] (as saved: 8-bit), or None.

    An output with non-finite values (a pipeline gone numerically wrong) shows no face.
    """
    if not np.isfinite(output).all():
        return None
    levels = np.clip(np.rint((np.asarray(output, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    faces = detector.detect(levels)
    return np.asarray(faces.boxes[0], np.float64) if len(faces.boxes) else None


def face_outcome(clean_box, protected_box, iou_threshold: float = IOU_THRESHOLD) -> str:
    """``"no clean face"``, ``"none"`` (the protected output shows none), ``"other"`` (IoU below the
    threshold) or ``"same"``."""
    if clean_box is None:
        return "no clean face"
    if protected_box is None:
        return "none"
    return "other" if iou(clean_box, protected_box) < iou_threshold else "same"


def arcface_source(pipelines, arcface: str | None, stand_in_weights: bool) -> str | None:
    """Where the ArcFace weights come from: a SimSwap pipeline folder's ``simswap_id/``, else ``arcface``
    (a folder, or ``"stand-in"``, which needs ``stand_in_weights``); None: no identity check.

    Args:
      pipelines: (name, folder or None) of the pipelines evaluated.
    """
    for name, folder in pipelines:
        if name in ("simswap", "simswap_source") and folder is not None:
            return str(Path(folder) / "simswap_id")
    if arcface == STAND_IN and not stand_in_weights:
        raise SetupError('arcface = "stand-in" needs --stand-in-weights (random ArcFace: identity numbers mean '
                         "nothing)")
    if arcface not in (None, STAND_IN) and not Path(arcface).is_dir():
        raise SetupError(f"arcface: {arcface}: not a folder (give one made by `leat-jax convert simswap_id`)")
    return arcface


def stand_in_arcface(seed: int):
    """Random ArcFace weights of the real architecture (the simswap stand-in's)."""
    return sv.identity_victim().init_params(seed)


def load_arcface(source: str, seed: int):
    """ArcFace parameters from ``arcface_source``'s answer (a converted folder, or ``STAND_IN``)."""
    if source == STAND_IN:
        return stand_in_arcface(seed)
    try:
        params, meta = checkpoints.load_params(source)
    except (checkpoints.CheckpointError, OSError) as e:
        raise SetupError(f"{source}: {e}") from None
    if meta.get("model") not in (None, "simswap_id"):
        raise SetupError(f"{source}: holds {meta.get('model')!r} weights, not 'simswap_id'")
    return params


class OutputChecks:
    """The identity and detection checks of one evaluation; clean outputs' results cached by key.

    Args:
      arcface: ArcFace parameters, or None (no identity check: cosines are NaN).
      detector: ``detect(uint8 image) -> Faces``, or None (``faces.detect``'s shipped MTCNN).
    """

    def __init__(self, arcface=None, detector=None):
        self.arcface = arcface
        self.detector = detector if detector is not None else load_detector()
        self._clean: dict = {}

    def measure(self, key, y_clean, y_adv) -> tuple[np.ndarray, list[str]]:
        """(A,) cosines and (A,) ``face_outcome``s of one image's (A, h, w, 3) clean and protected outputs."""
        if key not in self._clean:
            self._clean[key] = (self._embed(y_clean), [best_box(self.detector, y) for y in y_clean])
        e_clean, boxes = self._clean[key]
        cos = cosine(self._embed(y_adv), e_clean)
        return cos, [face_outcome(b, best_box(self.detector, y)) for b, y in zip(boxes, y_adv)]

    def _embed(self, y):
        return embed(self.arcface, y) if self.arcface is not None else np.full((len(y), 1), np.nan)


def summarize(cosines, outcomes, threshold: float = IDENTITY_THRESHOLD) -> dict:
    """One (pipeline, split) table of cosines and face outcomes (images, attributes) -> its numbers.

    Returns:
      ``mean_identity_cosine`` (over finite cosines) and ``identity_dsr`` (fraction of pairs with cosine <
      threshold; NaN, from a non-finite output, counts as not disrupted, as a NaN MSE does; None without
      ArcFace), ``clean_faces`` (pairs whose clean output shows a face), ``no_face_rate`` /
      ``other_face_rate`` / ``face_dsr`` (their sum) over those pairs (None when there are none).
    """
    c = np.asarray(cosines, np.float64).ravel()
    o = np.asarray(outcomes, object).ravel()
    finite = c[np.isfinite(c)]
    faces = int((o != "no clean face").sum())
    rate = (lambda what: float((o == what).sum() / faces)) if faces else (lambda what: None)
    return {
        "mean_identity_cosine": float(finite.mean()) if finite.size else None,
        "identity_dsr": float((np.nan_to_num(c, nan=np.inf) < threshold).mean()) if finite.size else None,
        "clean_faces": faces,
        "no_face_rate": rate("none"),
        "other_face_rate": rate("other"),
        "face_dsr": float(np.isin(o, ["none", "other"]).sum() / faces) if faces else None,
    }


DEFINITIONS = {
    "identity_cosine": "cosine of the SimSwap ArcFace embeddings (unit, 512) of out(x_adv, c) and out(x, c)",
    "identity_dsr": "fraction of pairs whose identity_cosine < identity_threshold (null: no ArcFace weights)",
    "face_outcome": f"MTCNN on both outputs (8-bit), largest box each: none (no face in the protected output), "
                    f"other (IoU < {IOU_THRESHOLD}), same; pairs whose clean output shows no face are left out",
    "face_dsr": "fraction of the pairs whose clean output shows a face where the outcome is none or other",
}

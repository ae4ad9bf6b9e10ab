"""Faces in the wild: protect every detected face of a photo, in the photo's own pixels.

``leat-jax immunize --faces detect``: per photo, detect faces (five landmarks
and a box each), place every victim's official crop of every face
(``leat_jax.faces.align``), and attack the photo's pixels through those
crops (``leat_jax.victims.warped``): each victim sees exactly the crop its
official pipeline would cut, and the gradient reaches the photo pixels it
was sampled from.

* A face's *footprint* is the set of photo pixels any of its crops reads
  (dilated by a pixel). Its *region* is the footprint's bounding box.
* Faces whose regions overlap form one *group*, attacked as one image: the
  region of the group (the union's bounding box) with every face's victims
  in one ensemble (the normalised ensemble weighs each face and victim
  equally). Groups therefore never share a pixel, and every photo pixel has
  one perturbation, within eps: the bound holds on the photo as written.
* Each group's region is padded (with pixels no crop reads) to a multiple of
  ``BUCKET`` a side, so regions of similar size share one compiled program.
* After the attack, pixels outside the group's footprints are reset: they
  changed no crop (the random start and zero gradients leave noise there),
  so every pixel outside every footprint is written byte-identical.
* A photo without a face is written unchanged (same samples; re-encoded
  like every output, so upright and without EXIF), and recorded ``no_face``.

``PhotoAttack`` is the job's attack stage for photos; every other stage
(reading, skipping, quantising, checking the bound after rounding, atomic
writes, the manifest) is the one aligned crops go through. Photos are
spread over the local devices, one photo per device at a time, its groups
one after another; the random start of group g of
a photo is keyed by (seed, the photo's id, g), so results do not depend on
run order or interruption.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.attack.pgd import attack_image, image_key
from leat_jax.faces import align
from leat_jax.faces.detect import SNAP, DetectConfig, load_detector
from leat_jax.pipeline import faults, images, writing
from leat_jax.pipeline.job import Context, Failure, Prepared, finite
from leat_jax.victims.warped import footprint, make_warp, warped

# Bumped when the output for the same photo, detections and settings changes.
PHOTOS_VERSION = "1"
# Regions are padded to a multiple of this many pixels a side (bounds recompiles).
BUCKET = 64


@dataclasses.dataclass(frozen=True)
class FacePlan:
    """One detected face and where each victim's crop of it lies."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    prob: float
    landmarks: np.ndarray  # (5, 2)
    crops: tuple[align.Crop, ...]  # one per victim, in the victims' order
    mask: np.ndarray  # (H, W) bool: the photo pixels any crop reads
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 of the mask (end exclusive)


@dataclasses.dataclass(frozen=True)
class Group:
    """Faces attacked together on one region of the photo."""

    faces: tuple[int, ...]  # indices into the plan's faces
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)

    @property
    def bucket(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.bbox
        return BUCKET * math.ceil((y1 - y0) / BUCKET), BUCKET * math.ceil((x1 - x0) / BUCKET)


@dataclasses.dataclass(frozen=True)
class Plan:
    faces: tuple[FacePlan, ...]
    groups: tuple[Group, ...]
    unusable: tuple[str, ...]  # detections no crop could be made from, with the reason


def default_detector():
    """The shipped face detector (``leat_jax.faces.detect``), boxes and landmarks snapped to its grid."""
    return load_detector(config=DetectConfig(snap=SNAP))


def settings(detector) -> dict:
    """What fixes the faces found and their crops: recorded, and part of the settings hash.

    The detector is named by its ``identity`` attribute if it has one, else by
    its class, a hash of its ``params`` and its ``config``, so other weights
    or detection settings redo the work.
    """
    identity = getattr(detector, "identity", None)
    if identity is None:
        identity = f"{type(detector).__module__}.{type(detector).__qualname__}"
        params = getattr(detector, "params", None)
        if params is not None:
            h = hashlib.sha256()
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
                a = np.asarray(leaf)
                h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            identity += f":params-{h.hexdigest()[:16]}"
        config = getattr(detector, "config", None)
        if config is not None:
            identity += f":{config!r}"
    return {"align": align.ALIGN_VERSION, "photos": PHOTOS_VERSION, "detector": str(identity)}


def detector_input(image: images.Decoded) -> np.ndarray:
    """(H, W, 3) uint8 RGB for the detector: 16-bit scaled down, grey repeated, alpha dropped."""
    return np.ascontiguousarray(images.rgb8(image), dtype=np.uint8)


def _detections(faces) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(box, prob, landmarks) per face, from the detector's ``Faces`` (None or empty: no face)."""
    if faces is None or getattr(faces, "landmarks", None) is None:
        return []
    lms = np.asarray(faces.landmarks, np.float64).reshape(-1, 5, 2)
    boxes = np.asarray(faces.boxes, np.float64).reshape(-1, 4)
    probs = np.asarray(faces.probs, np.float64).reshape(-1)
    if not (len(lms) == len(boxes) == len(probs)):
        raise ValueError(f"the detector returned {len(boxes)} boxes, {len(probs)} scores and {len(lms)} landmark sets")
    return [(boxes[i], float(probs[i]), lms[i]) for i in range(len(lms))]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a, b):
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def group_faces(bboxes: Sequence[tuple[int, int, int, int]]) -> tuple[Group, ...]:
    """Faces whose regions overlap, merged until no two groups' regions overlap (sorted by position)."""
    groups = [([i], b) for i, b in enumerate(bboxes)]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if _overlap(groups[i][1], groups[j][1]):
                    faces = sorted(groups[i][0] + groups[j][0])
                    groups[i] = (faces, _union(groups[i][1], groups[j][1]))
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    groups.sort(key=lambda g: (g[1][0], g[1][1], g[0]))
    return tuple(Group(tuple(f), b) for f, b in groups)


def plan(victims, faces, photo_hw: tuple[int, int]) -> Plan:
    """Crops, footprints and groups for the detector's ``faces`` of a photo of size ``photo_hw``."""
    out, unusable = [], []
    for k, (box, prob, lm) in enumerate(_detections(faces)):
        try:
            crops = tuple(align.crop(v.name, v.input_size, lm, box, photo_hw, v.crop_rule) for v in victims)
        except align.AlignError as e:
            unusable.append(f"face {k}: {e}")
            continue
        mask = np.zeros(photo_hw, bool)
        for c in crops:
            mask |= footprint(c.affine, photo_hw, c.size, c.supersample, c.border)
        bbox = _bbox(mask)
        if bbox is None:
            unusable.append(f"face {k}: its crops read no pixel of the photo")
            continue
        out.append(FacePlan(box, prob, lm, crops, mask, bbox))
    return Plan(tuple(out), group_faces([f.bbox for f in out]), tuple(unusable))


@functools.cache
def _jitted(victims: tuple, config):
    def one(params, region, key):
        protected, d0, d1, _ = attack_image(victims, config, params, region, key)
        return protected, d0, d1

    return jax.jit(one)


def group_key(seed: int, image_id: int, group: int):
    """The random start's key of group ``group`` of a photo: (seed, photo id, group index)."""
    return jax.random.fold_in(image_key(seed, np.uint32(image_id)), group)


def attack_group(victims, config, params, x: np.ndarray, the_plan: Plan, g: int, seed: int, image_id: int,
                 device=None):
    """Dispatch group ``g``'s attack (asynchronously, on ``device`` if given); (the group, device results)."""
    group = the_plan.groups[g]
    y0, x0, y1, x1 = group.bbox
    hb, wb = group.bucket
    region = np.zeros((hb, wb, x.shape[2]), np.float32)
    region[: y1 - y0, : x1 - x0] = x[y0:y1, x0:x1]
    wvs, ps = [], []
    for f in group.faces:
        for v, p, c in zip(victims, params, the_plan.faces[f].crops):
            wvs.append(warped(v, c.border, c.supersample))
            ps.append((p, make_warp(c.affine, (y0, x0), x.shape[:2])))
    fn = _jitted(tuple(wvs), config)
    region = jnp.asarray(region) if device is None else jax.device_put(region, device)
    return group, fn(tuple(ps), region, group_key(seed, image_id, g))


def attack_groups(victims, config, params, x: np.ndarray, the_plan: Plan, seed: int, image_id: int, device=None):
    """Dispatch every group's attack (asynchronously, on ``device`` if given); a list of (group, device results)."""
    return [attack_group(victims, config, params, x, the_plan, g, seed, image_id, device)
            for g in range(len(the_plan.groups))]


def fetched(launched) -> list:
    """(group, host results) for each launched group: waits for the device (raises its errors, out of memory too)."""
    return [(group, tuple(np.asarray(a) for a in results)) for group, results in launched]


def paste(x: np.ndarray, the_plan: Plan, launched, n_victims: int):
    """(protected photo (H, W, 3) float32, per face (start, end) distance arrays (K,)).

    Only footprint pixels take the attack's values; the rest stay ``x`` exactly.
    """
    out = x.copy()
    dists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for group, (protected, d0, d1) in launched:
        y0, x0, y1, x1 = group.bbox
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        for f in group.faces:
            mask |= the_plan.faces[f].mask[y0:y1, x0:x1]
        window = out[y0:y1, x0:x1]
        window[mask] = np.asarray(protected)[: y1 - y0, : x1 - x0][mask]
        d0 = np.asarray(d0).reshape(len(group.faces), n_victims)
        d1 = np.asarray(d1).reshape(len(group.faces), n_victims)
        for j, f in enumerate(group.faces):
            dists[f] = (d0[j], d1[j])
    return out, dists


class PhotoAttack:
    """The attack stage for photos (``--faces detect``): detect, attack every face group, paste, write.

    Photos go one at a time, round robin over ``devices`` (each holds a copy
    of the weights), their face groups one after another on that device; a
    result does not depend on the device it ran on.

    A device out-of-memory error on a photo (at dispatch or when its result
    is fetched) does not stop the job: from then on one photo per device is
    in flight, and the photo is redone alone (one such retry at a time), its
    groups one after another, each finished before the next starts (the same
    programs, so the same result). A group is the smallest unit (a smaller
    region would change the result), so a photo that runs out of memory even
    then is recorded failed with the fault ``faults.OUT_OF_MEMORY``; the
    recorder stops the job (exit 3) after ``faults.SAME_FAULT_LIMIT`` such
    photos in a row. Each retry is in ``stats()["out_of_memory"]``.

    Args:
      ctx: the job's context.
      victims, attack, params, seed: what the attack needs.
      devices: the local devices to spread photos over.
      detector: ``detect(uint8 HWC image) -> Faces``.
      say: shows a line to the user (compilations).
    """

    batch = 1

    def __init__(self, ctx: Context, victims, attack, params, seed: int, devices, detector, say):
        self.ctx, self.victims, self.attack, self.seed = ctx, victims, attack, seed
        self.devices = tuple(devices)
        self.params = [jax.device_put(params, d) for d in self.devices]
        self.in_flight = 2 * len(self.devices)  # keep every device busy while results are written
        self.next = 0
        self.detector = detector
        self.say = say
        self.seen: set = set()
        self.out_of_memory: list[dict] = []
        self.alone_lock = threading.Lock()  # one photo retried alone at a time

    def inspect(self, got: Prepared) -> Prepared | Failure:
        """Detect the faces and plan their crops (reader threads)."""
        try:
            faces = self.detector.detect(detector_input(got.image))
            got.plan = plan(self.victims, faces, got.image.size)
        except Exception as e:  # a detector failing on one photo must not stop the job
            text = str(e).strip().splitlines()
            reason = text[0] if text else type(e).__name__
            return Failure(got.item, f"{got.item.path}: face detection failed ({reason})")
        return got

    def submit(self, got: Prepared) -> list:
        for group in got.plan.groups:
            key = (group.bucket, len(group.faces))
            if key not in self.seen:
                self.say(
                    f"leat-jax: compiling the attack for a {key[0][1]}x{key[0][0]} face region with "
                    f"{key[1]} face(s) (once per region size)"
                )
            self.seen.add(key)
        k, self.next = self.next, (self.next + 1) % len(self.devices)
        try:
            groups = attack_groups(self.victims, self.attack, self.params[k], got.x, got.plan, self.seed,
                                   got.item.image_id, self.devices[k])
        except Exception as e:
            if not faults.is_out_of_memory(e):
                raise
            groups = e  # redone alone by ``finish``
        return [(got, k, groups)]

    def flush(self) -> list:
        return []

    def finish(self, launched) -> list[dict]:
        """Paste the groups' results into the photo and write it (writer threads)."""
        p, k, groups = launched
        try:
            if isinstance(groups, BaseException):
                raise groups
            groups = fetched(groups)
        except Exception as e:
            if not faults.is_out_of_memory(e):
                raise
            groups = self.alone(p, k, e)
            if isinstance(groups, dict):
                return [groups]
        names = self.ctx.names
        protected, dists = paste(p.x, p.plan, groups, len(names))
        faces = []
        for k, face in enumerate(p.plan.faces):
            d0, d1 = dists[k]
            faces.append({
                "box": [float(v) for v in face.box],
                "prob": face.prob,
                "landmarks": [[float(a), float(b)] for a, b in face.landmarks],
                "region": list(face.bbox),
                "distances": {n: {"start": finite(d0[i]), "end": finite(d1[i])} for i, n in enumerate(names)},
            })
        # The image's distances: each victim's mean over the faces (what the report averages).
        mean = {
            n: {
                "start": _mean([f["distances"][n]["start"] for f in faces]),
                "end": _mean([f["distances"][n]["end"] for f in faces]),
            }
            for n in names
        } if faces else {}
        extra = {"faces": faces, "no_face": not faces}
        if p.plan.unusable:
            extra["unusable_faces"] = list(p.plan.unusable)
        return [writing.write_image(self.ctx, p, protected, mean, extra)]

    def alone(self, p: Prepared, k: int, error: BaseException) -> list | dict:
        """Redo photo ``p`` after an out-of-memory ``error``: its groups one at a time, nothing else retried.

        Returns:
          (group, host results) per group, or the failed record when even that runs out of memory.
        """
        with self.alone_lock:
            if self.in_flight > len(self.devices):
                self.in_flight = len(self.devices)
                self.say("leat-jax: device out of memory; from now on one photo per device at a time")
            self.say(f"leat-jax: device out of memory on {p.item.path}; retrying it alone")
            note = {"photo": p.item.rel, "groups": len(p.plan.groups), "error": first_line(error)}
            try:
                groups = [fetched([attack_group(self.victims, self.attack, self.params[k], p.x, p.plan, g, self.seed,
                                                p.item.image_id, self.devices[k])])[0]
                          for g in range(len(p.plan.groups))]
            except Exception as e:
                if not faults.is_out_of_memory(e):
                    raise
                self.out_of_memory.append({**note, "retried": "alone", "result": "failed"})
                return writing.failed_record(
                    self.ctx, p.item, f"{p.item.path}: device out of memory even alone, one face region at a time "
                    f"({first_line(e)})", faults.OUT_OF_MEMORY)
            self.out_of_memory.append({**note, "retried": "alone", "result": "done"})
        return groups

    def stats(self) -> dict:
        return {"batch": 1, "photo_devices": len(self.devices), "photos_in_flight": self.in_flight,
                "out_of_memory": list(self.out_of_memory)}


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None

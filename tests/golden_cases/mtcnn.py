"""Golden support for MTCNN (facenet-pytorch 2.6.0, real weights).

The weights are real, not recipe-made. The source converted here is the
facenet-pytorch wheel when one is at hand offline (``$LEAT_MTCNN_WHEEL``, the
one ``scripts/setup.sh`` fetches into ``.cache/wheels/``, or
``~/.cache/leat-jax/facenet_pytorch-2.6.0-py3-none-any.whl``): its sha256 and
its members' are checked against the layout. Otherwise the parameters
shipped in the package are written back as the three official legacy-format
state_dicts, in the layout's key order. Either way the files go through
``leat-jax convert``'s path (``converters.convert``) and the result must equal
the shipped parameters exactly; the detector is then loaded from that
converted folder.

Compared (float32 port, highest matmul precision):
- each network on the inputs the official pipeline fed it
  (``pnet_in``, ``pnet2_in``, ``rnet_in``, ``onet_in``): max-rel 1e-4;
- the whole ``Detector.detect`` on ``image``: the same face count and
  probabilities within 1e-5 against both the float64 run (``boxes``...) and
  the default float32 one (``boxes_f32``...); boxes and landmarks within 0.01
  px of the float64 run and within ``PX_ULPS`` float32 ulps of the photo's
  size of the float32 run (the figure README.md states).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

NAME = "mtcnn"
NETS = ("pnet", "rnet", "onet")
WHEEL_ENV = "LEAT_MTCNN_WHEEL"
WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
SETUP_WHEEL = Path(__file__).resolve().parents[2] / ".cache" / "wheels" / WHEEL_NAME  # scripts/setup.sh fetches it
CACHED_WHEEL = Path.home() / ".cache" / "leat-jax" / WHEEL_NAME
PX_TOL, PROB_TOL = 1e-2, 1e-5  # the golden README's
# What README.md states for the float32 path: boxes and landmarks within this many
# float32 ulps of the photo's larger side (6.1e-5 px each from 512 to 1023 px) of
# facenet-pytorch's own float32 output: both round coordinates of that size.
PX_ULPS = 2


def official_state_dict(net_params, layout_state_dict) -> OrderedDict:
    """Flax parameters of one net back to the official state_dict (torch tensors, layout order)."""
    import torch

    sd = OrderedDict()
    for key, shape, _ in layout_state_dict:
        module, leaf = key.rsplit(".", 1)
        node = net_params[module]
        if leaf == "bias":
            a = node["bias"]
        elif "kernel" in node:
            a = np.asarray(node["kernel"])
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T  # HWIO -> OIHW; (in, out) -> (out, in)
        else:
            a = node["weight"]  # PReLU slopes
        a = np.ascontiguousarray(a, np.float32)
        assert a.shape == tuple(shape), (key, a.shape, shape)
        sd[key] = torch.from_numpy(a)
    return sd


def write_official_files(folder, params, layout) -> Path:
    """``params`` as the package's ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (legacy format) in ``folder``."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for net in NETS:
        sd = official_state_dict(params[net], layout["checkpoint"]["files"][net]["state_dict"])
        torch.save(sd, folder / f"{net}.pt", _use_new_zipfile_serialization=False)
    return folder


def cached_wheel() -> Path | None:
    """The real wheel, if one is on this machine: ``$LEAT_MTCNN_WHEEL``, set-up's cache, then the user cache."""
    env = os.environ.get(WHEEL_ENV)
    for path in ([Path(env)] if env else [SETUP_WHEEL, CACHED_WHEEL]):
        if path.is_file():
            return path
    return None


def _rel_max(ours, golden) -> float:
    golden, ours = np.asarray(golden, np.float64), np.asarray(ours, np.float64)
    if golden.shape != ours.shape:
        return np.inf
    if golden.size == 0:  # a case whose stage fed no crop to this net
        return 0.0
    return float(np.max(np.abs(ours - golden)) / np.max(np.abs(golden)))


def _ulps_max(ours, golden, image) -> float:
    """Largest |ours - golden| in float32 ulps of the image's larger side."""
    return _abs_max(ours, golden) / float(np.spacing(np.float32(max(image.shape[:2]))))


def _abs_max(ours, golden) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(golden, np.float64)), initial=0.0))


def _source(layout, shipped, workdir) -> tuple[Path, list[dict]]:
    """The file(s) to convert, and the checks made on them."""
    from converters import mtcnn as converter

    wheel = cached_wheel()
    if wheel is None:
        warnings.warn(f"facenet-pytorch wheel not found ({SETUP_WHEEL}; scripts/setup.sh fetches it): "
                      "converting the shipped parameters written back out instead", stacklevel=2)
        return write_official_files(Path(workdir) / "facenet_pytorch_data", shipped, layout), []
    files = layout["checkpoint"]["files"]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    members = converter.source_meta(wheel)["source_members_sha256"]
    wrong = int(digest != layout["source"]["wheel_sha256"]) + sum(members[n] != files[n]["sha256"] for n in NETS)
    return wheel, [{"what": f"sha256 of {wheel.name} and its 3 members vs layout (mismatches)",
                    "dtype": "-", "out_err": float(wrong), "out_tol": 0.0}]


@functools.cache
def converted(layout_path: Path):
    """(checks, detector): the source converted once per session (the weights are the same for every case)."""
    import jax

    import converters
    from leat_jax.checkpoints import flatten
    from leat_jax.faces import detect as detection

    layout = json.loads(Path(layout_path).read_text())
    shipped = detection.read_params(detection.SHIPPED)
    with tempfile.TemporaryDirectory() as workdir:
        src, results = _source(layout, shipped, workdir)
        dst = Path(workdir) / "converted"
        converters.convert(NAME, src, dst)
        detector = detection.load_detector(dst)
    got, want = flatten(jax.tree.map(np.asarray, detector.params)), flatten(shipped)
    diff = max(_abs_max(got[k], want[k]) for k in want) if set(got) == set(want) else np.inf
    results.append({"what": f"convert {src.name} -> params vs shipped (max abs)", "dtype": "float32",
                    "out_err": diff, "out_tol": 0.0})
    return results, detector


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from leat_jax.models import mtcnn

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    checks, detector = converted(case_path.parent / "layout.json")
    results = list(checks)

    params = detector.params
    to_nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))  # noqa: E731
    to_nchw = lambda a: np.transpose(np.asarray(a), (0, 3, 1, 2))  # noqa: E731
    with jax.default_matmul_precision("highest"):
        for p in ("pnet", "pnet2"):
            reg, prob = mtcnn.pnet().apply(params["pnet"], to_nhwc(case[f"{p}_in"]))
            results += [{"what": f"{p} {k} (level {int(case[f'{p}_level'])})", "dtype": "float32",
                         "out_err": _rel_max(to_nchw(v), case[f"{p}_{k}"])} for k, v in (("prob", prob), ("reg", reg))]
        reg, prob = mtcnn.rnet().apply(params["rnet"], to_nhwc(case["rnet_in"]))
        results += [{"what": f"rnet {k} ({len(v)} crops)", "dtype": "float32",
                     "out_err": _rel_max(v, case[f"rnet_{k}"])}
                    for k, v in (("prob", prob), ("reg", reg))]
        reg, lm, prob = mtcnn.onet().apply(params["onet"], to_nhwc(case["onet_in"]))
        results += [{"what": f"onet {k} ({len(v)} crops)", "dtype": "float32",
                     "out_err": _rel_max(v, case[f"onet_{k}"])}
                    for k, v in (("prob", prob), ("reg", reg), ("landmarks", lm))]

    t0 = time.perf_counter()
    faces = detector.detect(case["image"])
    seconds = time.perf_counter() - t0
    # The port runs in float32, as facenet-pytorch does by default: the float32
    # golden is binding. The float64 one is binding too where the two goldens
    # agree within the tolerances (all shared cases); where they do not (a
    # float32 rounding flipping a pyramid cell), only its figures are reported.
    goldens_agree = len(case["boxes"]) == len(case["boxes_f32"]) and all(
        _abs_max(case[f], case[f + "_f32"]) <= tol
        for f, tol in (("boxes", PX_TOL), ("landmarks", PX_TOL), ("probs", PROB_TOL)))
    for suffix, run in (("", "float64 run"), ("_f32", "float32 run")):
        binding = suffix == "_f32" or goldens_agree
        loose = {} if binding else {"out_tol": float("inf")}
        n = len(case[f"boxes{suffix}"])
        results.append({"what": f"detect: face count {len(faces.boxes)} vs {n} ({run}; {seconds:.2f} s with compiles)"
                        + ("" if binding else " (reported: the goldens disagree)"),
                        "dtype": "float32", "out_err": float(abs(len(faces.boxes) - n)), "out_tol": 0.0, **loose})
        if len(faces.boxes) != n:
            continue
        for field, tol in (("boxes", PX_TOL), ("landmarks", PX_TOL), ("probs", PROB_TOL)):
            ours, golden = getattr(faces, field), case[field + suffix]
            results.append({"what": f"detect: {field} max abs vs {run}", "dtype": "float32",
                            "out_err": _abs_max(ours, golden), "out_tol": tol, **loose})
            if suffix == "_f32" and field != "probs":
                results.append({"what": f"detect: {field} max abs in float32 ulps of the photo's size vs {run}",
                                "dtype": "float32", "out_err": _ulps_max(ours, golden, case["image"]),
                                "out_tol": PX_ULPS})
    return results

"""MTCNN: converter sources and errors, the NMS flavours, the pyramid, area
resampling, ceil-mode pooling, the (W, H, C) flatten, and the detector's
behaviour on photos without golden data."""
from __future__ import annotations

import json
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import converters
from converters import mtcnn as conv
from converters.keymap import ConversionError
from converters.torch_io import CheckpointReadError
from leat_jax import cli
from leat_jax.checkpoints import CheckpointError, flatten
from leat_jax.faces import DetectConfig, Detector, Faces, load_detector
from leat_jax.faces import detect as D
from leat_jax.models import mtcnn as M
from tests.golden_cases.mtcnn import SETUP_WHEEL, cached_wheel, official_state_dict, write_official_files
from tests.golden_harness import GOLDEN_DIR, REPO

LAYOUT = json.loads((GOLDEN_DIR / "mtcnn" / "layout.json").read_text())
SAMPLES = REPO / "leat_jax" / "pipeline" / "samples"


@pytest.fixture(scope="module")
def shipped():
    return D.read_params(D.SHIPPED)


@pytest.fixture(scope="module")
def folder(shipped, tmp_path_factory):
    return write_official_files(tmp_path_factory.mktemp("fnp") / "data", shipped, LAYOUT)


def wheel_like(path, folder, skip=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("facenet_pytorch/__init__.py", "")
        for net in conv.NETS:
            if net not in skip:
                zf.write(folder / f"{net}.pt", f"facenet_pytorch/data/{net}.pt")
    return path


def assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# --------------------------------------------------------------- converter


def test_shipped_weights_match_their_meta(shipped):
    meta = json.loads((D.SHIPPED / "meta.json").read_text())
    assert conv.params_digest(shipped) == meta["params_sha256"]
    assert meta["source_members_sha256"] == {n: LAYOUT["checkpoint"]["files"][n]["sha256"] for n in conv.NETS}
    assert meta["source_wheel_sha256"] == LAYOUT["source"]["wheel_sha256"]
    sizes = {n: sum(a.size for a in flatten(shipped[n]).values()) for n in conv.NETS}
    assert sizes == {n: LAYOUT["checkpoint"]["files"][n]["n_params"] for n in conv.NETS}
    assert "Permission is hereby granted" in (D.SHIPPED / "LICENSE-facenet-pytorch.txt").read_text()


def test_written_files_are_the_official_legacy_state_dicts(folder):
    for net in conv.NETS:
        raw = (folder / f"{net}.pt").read_bytes()
        assert not raw.startswith(b"PK")  # legacy stream, not the zip format
        sd = torch.load(folder / f"{net}.pt", weights_only=True)
        layout = LAYOUT["checkpoint"]["files"][net]["state_dict"]
        assert [[k, list(v.shape), "float32"] for k, v in sd.items()] == layout


def test_converts_from_a_wheel_through_the_cli(folder, shipped, tmp_path, capsys):
    wheel = wheel_like(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl", folder)
    assert cli.main(["convert", "mtcnn", str(wheel), str(tmp_path / "out")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["model"] == "mtcnn" and meta["source_sha256"] == converters.sha256(wheel)
    assert meta["source_members_sha256"]["rnet"] == converters.sha256(folder / "rnet.pt")
    assert meta["source_is_facenet_pytorch_2_6_0"] is False  # re-saved files, not the wheel's bytes
    assert_same_params(load_detector(tmp_path / "out").params, shipped)


def test_converts_the_real_wheel_through_the_cli(folder, shipped, tmp_path, capsys):
    """The real facenet-pytorch 2.6.0 wheel (set-up fetches it), sha256 checked; offline, the round trip."""
    wheel, real = cached_wheel(), True
    if wheel is None:
        warnings.warn(f"{SETUP_WHEEL} is missing (set-up was offline?): the MTCNN converter is tested on the "
                      "shipped parameters written back out, not on the real wheel", stacklevel=1)
        wheel, real = wheel_like(tmp_path / SETUP_WHEEL.name, folder), False
    else:
        assert converters.sha256(wheel) == LAYOUT["source"]["wheel_sha256"], f"{wheel}: not the recorded wheel"
    assert cli.main(["convert", "mtcnn", str(wheel), str(tmp_path / "out")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["source_is_facenet_pytorch_2_6_0"] is real
    if real:  # the wheel's own members, byte for byte
        assert meta["source_members_sha256"] == {n: LAYOUT["checkpoint"]["files"][n]["sha256"] for n in conv.NETS}
    assert_same_params(load_detector(tmp_path / "out").params, shipped)


@pytest.mark.parametrize("where", ["data", "package"])
def test_converts_from_a_folder(folder, shipped, where):
    src = folder if where == "data" else folder.parent  # facenet_pytorch/data or facenet_pytorch/
    assert_same_params(converters.to_params("mtcnn", src), shipped)


def test_missing_member_or_file_is_named(folder, tmp_path):
    wheel = wheel_like(tmp_path / "w.whl", folder, skip=("onet",))
    with pytest.raises(ConversionError, match=r"w\.whl: no member facenet_pytorch/data/onet\.pt"):
        converters.to_params("mtcnn", wheel)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "pnet.pt").write_bytes((folder / "pnet.pt").read_bytes())
    with pytest.raises(ConversionError, match=r"partial/rnet\.pt: missing"):
        converters.to_params("mtcnn", partial)
    (tmp_path / "notzip.whl").write_bytes(b"hello")
    with pytest.raises(ConversionError, match=r"notzip\.whl: not a zip file"):
        converters.to_params("mtcnn", tmp_path / "notzip.whl")
    with pytest.raises(ConversionError, match="no such file"):
        converters.to_params("mtcnn", tmp_path / "absent.whl")


def test_wrong_shapes_and_keys_are_named(folder, shipped, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for net in conv.NETS:
        (bad / f"{net}.pt").write_bytes((folder / f"{net}.pt").read_bytes())
    sd = official_state_dict(shipped["rnet"], LAYOUT["checkpoint"]["files"]["rnet"]["state_dict"])
    sd["dense4.weight"] = sd["dense4.weight"][:, :512].clone()
    torch.save(sd, bad / "rnet.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match=r"bad/rnet\.pt: .*shape mismatch \[dense4\.weight"):
        converters.to_params("mtcnn", bad)
    torch.save({"model": sd}, bad / "rnet.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match=r"bad/rnet\.pt: expected a state_dict"):
        converters.to_params("mtcnn", bad)
    (bad / "onet.pt").write_bytes(b"\x80\x02garbage")
    torch.save(sd, bad / "rnet.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointReadError, match=r"bad/onet\.pt: not a readable PyTorch checkpoint"):
        converters.to_params("mtcnn", bad)


def test_load_detector_errors_are_one_line(tmp_path, folder):
    with pytest.raises(CheckpointError, match="a file; give a folder"):
        load_detector(folder / "pnet.pt")
    with pytest.raises(CheckpointError, match="not a converted checkpoint"):
        load_detector(tmp_path)


# --------------------------------------------------------------------- NMS


def test_nms_torchvision_iou_no_plus_one_strict_and_stable_ties():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.9])
    # IoU(0, 1) = 60 / 100 = 0.6 exactly: suppressed above 0.6 only ("> thr").
    assert D.nms_torchvision(boxes, scores, 0.5).tolist() == [0, 2]
    assert D.nms_torchvision(boxes[:3], scores[:3], 0.6).tolist() == [0, 1, 2]
    # Box 3 duplicates box 0 with the same score: the stable order keeps the first.
    assert D.nms_torchvision(boxes, scores, 0.99).tolist() == [0, 1, 2]
    assert D.nms_torchvision(boxes[[3, 0]], scores[[3, 0]], 0.99).tolist() == [0]
    # Two empty boxes (area 0 without +1): 0/0 never suppresses.
    assert D.nms_torchvision(np.zeros((2, 4)), np.array([0.5, 0.6]), 0.5).tolist() == [1, 0]
    assert D.nms_torchvision(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_nms_numpy_min_and_union_with_plus_one():
    big, small = [0, 0, 9, 9], [2, 2, 5, 5]  # +1 areas 100 and 16, the small one inside
    boxes, scores = np.array([big, small], float), np.array([0.9, 0.8])
    assert D.nms_numpy(boxes, scores, 0.7, "Min").tolist() == [0]  # 16 / min(100, 16) = 1
    assert D.nms_numpy(boxes, scores, 0.7, "Union").tolist() == [0, 1]  # 16 / 100
    assert D.nms_torchvision(boxes, scores, 0.7).tolist() == [0, 1]  # 9 / 81
    # Overlap exactly at the threshold is kept ("<= thr"): 7 / min(10, 10) with +1 widths.
    strip = np.array([[0, 0, 9, 0], [3, 0, 12, 0]], float)
    assert D.nms_numpy(strip, np.array([0.5, 0.9]), 0.7, "Min").tolist() == [1, 0]
    assert D.nms_numpy(strip, np.array([0.5, 0.9]), 0.69, "Min").tolist() == [1]
    # Point boxes: +1 makes them 1 x 1 and identical (suppressed), torchvision sees 0/0.
    points = np.zeros((2, 4))
    assert D.nms_numpy(points, np.array([0.5, 0.6]), 0.7, "Min").tolist() == [1]
    with pytest.raises(ValueError, match="method"):
        D.nms_numpy(boxes, scores, 0.7, "IoU")


# ----------------------------------------------------- pyramid, resampling


def test_pyramid_scales_and_level_sizes():
    scales = D.pyramid_scales(512, 512)
    assert [D.level_size(512, 512, s)[0] for s in scales] == [308, 218, 155, 110, 78, 56, 40, 28, 20, 14]
    s, want = 0.6, []
    for _ in scales:  # repeated multiplication, not 0.6 * 0.709**k
        want.append(s)
        s *= 0.709
    assert scales == want
    assert D.level_size(50, 40, 0.5) == (26, 21)  # floor + 1 even when side * scale is integral
    assert D.pyramid_scales(19, 400) == []  # 19 * 0.6 < 12: no level
    assert len(D.pyramid_scales(400, 20)) == 1 and len(D.pyramid_scales(40, 40, DetectConfig(min_face_size=40))) == 1


def test_area_resize_is_torch_area_interpolation():
    csum = D.row_cumsum(np.array([0, 10, 20, 30, 40], np.uint8).reshape(5, 1, 1))
    # 5 -> 2: bins 0..2 and 2..4 overlap on the middle pixel.
    np.testing.assert_array_equal(D.area_resize(csum, 0, 0, 5, 1, (2, 1)).ravel(), [10.0, 30.0])
    np.testing.assert_array_equal(D.area_resize(csum, 1, 0, 2, 1, (4, 1)).ravel(), [10, 10, 20, 20])  # up: repeats
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    csum = D.row_cumsum(img)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    for top, left, h, w, size in [(0, 0, 37, 53, (23, 31)), (3, 5, 30, 17, (24, 24)), (0, 9, 11, 40, (48, 48))]:
        want = F.interpolate(t[:, :, top:top + h, left:left + w], size=size, mode="area")[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(D.area_resize(csum, top, left, h, w, size), want, rtol=1e-12, atol=1e-12)


def test_crop_windows_truncate_clamp_and_drop_empty():
    boxes = np.array([[-3.7, 2.9, 10.2, 99.0], [5.5, 5.5, 8.5, 8.5], [60.0, 1.0, 70.0, 9.0],
                      [-20.0, -20.0, -5.0, -5.0]])
    top, left, rows, cols, ok = D.crop_windows(boxes, 50, 40)
    # x1 -3.7 -> -3 -> 1, y1 2.9 -> 2, x2 10.2 -> 10, y2 99 -> 50: rows 1..49, cols 0..9 (0-based)
    assert (top[0], left[0], rows[0], cols[0]) == (1, 0, 49, 10)
    assert (top[1], left[1], rows[1], cols[1]) == (4, 4, 4, 4)
    assert ok.tolist() == [True, True, False, False]


# ------------------------------------------------------------ the networks


def test_max_pool_ceil_mode_matches_torch():
    x = np.random.default_rng(1).normal(size=(2, 7, 10, 3)).astype(np.float32)
    for k, s in [(2, 2), (3, 2)]:
        want = F.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), k, s, ceil_mode=True).permute(0, 2, 3, 1).numpy()
        got = np.asarray(M.max_pool_ceil(jnp.asarray(x), k, s))
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def torch_rnet(p, x_nchw):
    """R-Net as the official forward computes it, from our parameter tree."""
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    conv2d = lambda x, n: F.conv2d(x, t(p[n]["kernel"]).permute(3, 2, 0, 1), t(p[n]["bias"]))  # noqa: E731
    x = F.max_pool2d(F.prelu(conv2d(x_nchw, "conv1"), t(p["prelu1"]["weight"])), 3, 2, ceil_mode=True)
    x = F.max_pool2d(F.prelu(conv2d(x, "conv2"), t(p["prelu2"]["weight"])), 3, 2, ceil_mode=True)
    x = F.prelu(conv2d(x, "conv3"), t(p["prelu3"]["weight"]))
    x = x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)
    x = F.prelu(F.linear(x, t(p["dense4"]["kernel"]).T, t(p["dense4"]["bias"])), t(p["prelu4"]["weight"]))
    lin = lambda n: F.linear(x, t(p[n]["kernel"]).T, t(p[n]["bias"]))  # noqa: E731
    return lin("dense5_2"), F.softmax(lin("dense5_1"), dim=1)


def test_flatten_order_is_w_h_c(shipped, monkeypatch):
    x = np.random.default_rng(2).uniform(-1, 1, (4, 24, 24, 3)).astype(np.float32)
    want_reg, want_prob = (a.numpy() for a in torch_rnet(shipped["rnet"], torch.from_numpy(x).permute(0, 3, 1, 2)))
    with jax.default_matmul_precision("highest"):
        reg, prob = M.rnet().apply(shipped["rnet"], jnp.asarray(x))
        np.testing.assert_allclose(reg, want_reg, atol=1e-5)
        np.testing.assert_allclose(prob, want_prob, atol=1e-5)
        # An ordinary NHWC flatten gives other numbers: this test would catch it.
        monkeypatch.setattr(M, "wh_flatten", lambda a: a.reshape(a.shape[0], -1))
        wrong_reg, _ = M.rnet().apply(shipped["rnet"], jnp.asarray(x))
    assert np.max(np.abs(np.asarray(wrong_reg) - want_reg)) > 1e-2


def test_padded_batches_do_not_change_outputs(shipped):
    x = np.random.default_rng(3).uniform(-1, 1, (20, 48, 48, 3)).astype(np.float32)
    assert D.bucket(1) == 16 and D.bucket(17) == 32 and D.bucket(512) == 512 and D.bucket(513) == 512
    params = jax.tree.map(jnp.asarray, shipped["onet"])
    got = D._batched(D._onet, params, x)
    want = D._onet(params, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, np.asarray(w), rtol=0, atol=1e-6)
    # A stage that feeds no crop: empty outputs, not a reshape error.
    assert [o.shape for o in M.onet().apply(params, jnp.zeros((0, 48, 48, 3)))] == [(0, 4), (0, 10), (0, 2)]


# -------------------------------------------------------------- detection


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def test_black_image_has_no_face(detector):
    faces = detector.detect(np.zeros((40, 48, 3), np.uint8))
    assert isinstance(faces, Faces)
    assert faces.boxes.shape == (0, 4) and faces.probs.shape == (0,) and faces.landmarks.shape == (0, 5, 2)
    assert faces.boxes.dtype == faces.probs.dtype == faces.landmarks.dtype == np.float32
    assert len(detector.detect(np.zeros((15, 300, 3), np.uint8)).boxes) == 0  # too small for one level


def test_one_face_on_the_samples_grey_replicated(detector):
    rgb = np.asarray(Image.open(SAMPLES / "astronaut_256.png").convert("RGB"))
    grey = np.asarray(Image.open(SAMPLES / "astronaut_256.png").convert("L"))
    for image in (rgb, grey, grey[:, :, None]):
        faces = detector.detect(image)
        assert len(faces.boxes) == 1 and faces.probs[0] > 0.99
        (x1, y1, x2, y2), lm = faces.boxes[0], faces.landmarks[0]
        assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
        assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left before right, eyes and mouth
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes, nose, mouth downwards
    rgb_faces, grey_faces = detector.detect(rgb), detector.detect(np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(detector.detect(grey).boxes, grey_faces.boxes)
    assert np.abs(rgb_faces.boxes - grey_faces.boxes).max() < 10  # same face, grey or colour


def test_largest_face_first_and_thresholds_honoured(detector):
    face = np.asarray(Image.open(SAMPLES / "astronaut_256.png").convert("RGB"))
    small = np.asarray(Image.fromarray(face).resize((128, 128), Image.BICUBIC))
    canvas = np.full((256, 420, 3), 128, np.uint8)
    canvas[:, :256] = face
    canvas[64:192, 280:408] = small
    faces = detector.detect(canvas)
    assert len(faces.boxes) == 2
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    assert areas[0] > 2 * areas[1] and faces.boxes[0, 2] < 256 < faces.boxes[1, 0]
    strict = Detector(detector.params, DetectConfig(thresholds=(0.6, 0.7, float(faces.probs.min()))))
    assert len(strict.detect(canvas).boxes) == 1  # O-Net keeps prob > threshold only


def test_bad_inputs_and_settings_are_refused(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((40, 40, 4), np.uint8))
    with pytest.raises(ValueError, match="factor"):
        DetectConfig(factor=1.0)
    with pytest.raises(ValueError, match="thresholds"):
        DetectConfig(thresholds=(0.6, 0.7))
    with pytest.raises(CheckpointError, match="MTCNN parameters"):
        Detector({"pnet": {}, "rnet": {}, "onet": {}})

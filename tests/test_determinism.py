"""One result per image, whatever the batch size, device count or interruption, at real sizes.

Two real architectures (``determinism_worker.VICTIMS``) on stand-in weights
attack 256 and 512 px images; results are compared bit for bit. With one
program per batch size (as before the microbatch), these very images
differed in 5-6 samples each between batch sizes 1 and 3, by a whole step.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from leat_jax import checkpoints, parallel, victims
from leat_jax.attack import AttackConfig, prepared
from leat_jax.parallel.mesh import replicate
from leat_jax.pipeline import config as settings
from leat_jax.pipeline import immunize, inputs, photos, victimset
from tests.determinism_worker import ITERATIONS, VICTIMS
from tests.golden_harness import REPO
from tests.pipeline_toys import ENV
from tests.test_pipeline_immunize import immunize as toy_immunize
from tests.test_pipeline_immunize import report, simple_set

CONFIG = AttackConfig(iterations=ITERATIONS)
SAMPLES = REPO / "leat_jax" / "pipeline" / "samples"
PHOTOS = (SAMPLES / "astronaut_256.png", SAMPLES / "astronaut_tight.jpg", SAMPLES / "astronaut_grey.png")


def host_stand_in(victim, seed: int):
    """Random weights of ``victim``'s architecture drawn by numpy (ArcFace's own init compiles for a minute).

    Kernels ~ N(0, 1 / fan_in), batch-norm statistics and scales 1, biases 0,
    PReLU slopes 0.25: activations keep their scale through the network.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, t):
        name = jax.tree_util.keystr(path)
        if name.endswith(("['var']", "['scale']")):
            return np.ones(t.shape, t.dtype)
        if name.endswith(("['mean']", "['bias']")):
            return np.zeros(t.shape, t.dtype)
        if name.endswith("['weight']") and len(t.shape) == 1:
            return np.full(t.shape, 0.25, t.dtype)
        return (rng.standard_normal(t.shape, np.float32) / math.sqrt(math.prod(t.shape[:-1]))).astype(t.dtype)

    return jax.tree_util.tree_map_with_path(leaf, victim.template)


def rgb(path, size=None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    return np.asarray(image if size is None else image.resize((size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The victims' stand-in weights as converted checkpoint folders (``WEIGHTS/<name>``)."""
    folder = tmp_path_factory.mktemp("weights")
    for k, name in enumerate(VICTIMS):
        params = host_stand_in(victims.get(name), k)
        checkpoints.save_params(folder / name, params, {"model": name, "source_sha256": f"{k}" * 64})
    return folder


@pytest.fixture(scope="module")
def attack_inputs(tmp_path_factory):
    x = np.stack([rgb(p) for p in PHOTOS]).astype(np.float32) / 127.5 - 1.0
    ids = np.arange(7, 7 + len(x), dtype=np.uint32)
    path = tmp_path_factory.mktemp("inputs") / "images.npz"
    np.savez(path, x=x, ids=ids)
    return path, x, ids


@pytest.fixture(scope="module")
def one_device(weights, attack_inputs):
    """The 256 px images attacked on one device: as one batch of 3, as 2 + 1 and one at a time."""
    _, x, ids = attack_inputs
    vs, ps = zip(*(victims.load(n, weights / n) for n in VICTIMS))
    mesh = parallel.data_mesh(1)
    ps = replicate(prepared(vs, CONFIG, ps), mesh)

    def attack(batch):
        parts = [parallel.sharded_attack(vs, CONFIG, mesh, ps, x[i:i + batch], ids[i:i + batch], 0)
                 for i in range(0, len(x), batch)]
        return np.concatenate([np.asarray(p.protected) for p in parts])

    return {batch: attack(batch) for batch in (3, 2, 1)}


def test_batch_size_changes_no_sample(one_device):
    ref = one_device[1]
    assert ref.shape == (3, 256, 256, 3) and np.abs(ref).max() <= 1.0
    for batch in (2, 3):
        differing = int((one_device[batch] != ref).sum())
        assert differing == 0, f"batch {batch}: {differing} samples differ from one image at a time"


def _child(out, host_devices, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.determinism_worker", str(out), "--host-devices", str(host_devices),
           *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("devices,batch", [(2, 3), (4, 3)])
def test_devices_change_no_sample(devices, batch, one_device, weights, attack_inputs, tmp_path):
    got = _child(tmp_path / "out.npz", devices, "attack", weights, attack_inputs[0], batch)
    assert int(got["n_devices"]) == devices
    differing = int((got["protected"] != one_device[1]).sum())
    assert differing == 0, f"{devices} devices: {differing} samples differ from one device"


def test_photos_find_the_same_faces_on_one_and_four_devices(tmp_path):
    photos_ = (*PHOTOS, tmp_path / "mirrored.png")
    Image.fromarray(rgb(PHOTOS[1])[:, ::-1]).save(photos_[-1])
    assert jax.device_count() == 1
    detector = photos.default_detector()
    four = _child(tmp_path / "faces.npz", 4, "detect", *photos_)
    assert int(four["n_devices"]) == 4
    for i, path in enumerate(photos_):
        faces = detector.detect(rgb(path))
        assert len(faces.boxes) == 1, path
        np.testing.assert_array_equal(four[f"boxes{i}"], faces.boxes, err_msg=str(path))
        np.testing.assert_array_equal(four[f"landmarks{i}"], faces.landmarks, err_msg=str(path))
        # snapped to the grid, which moves nothing by more than half a step
        assert np.all(faces.landmarks * 64 == np.round(faces.landmarks * 64))


def _immunize(src, dst, weights, batch_size):
    cfg = settings.build(
        str(src), str(dst), victims=tuple(victimset.VictimSpec(n, str(weights / n)) for n in VICTIMS),
        iterations=ITERATIONS, batch_size=batch_size, quiet=True, contact_sheet=0,
    )
    return immunize.run(cfg)


def test_interrupted_run_resumes_to_the_files_of_an_uninterrupted_one(weights, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, image in {"a.png": rgb(PHOTOS[0]), "b.png": rgb(PHOTOS[1]), "c.png": rgb(PHOTOS[2], 512)}.items():
        Image.fromarray(image).save(src / name)
    part = tmp_path / "part"  # what a run killed after two images had written
    part.mkdir()
    for name in ("a.png", "c.png"):
        shutil.copy(src / name, part / name)
    resumed, uninterrupted = tmp_path / "resumed", tmp_path / "uninterrupted"
    assert _immunize(part, resumed, weights, 1).protected == 2
    summary = _immunize(src, resumed, weights, 3)
    assert (summary.skipped, summary.protected, summary.failed) == (2, 1, 0)
    assert _immunize(src, uninterrupted, weights, 2).protected == 3
    for name in ("a.png", "b.png", "c.png"):
        assert (resumed / name).read_bytes() == (uninterrupted / name).read_bytes(), name


def test_batch_size_resumes_and_microbatch_redoes(capsys, monkeypatch, tmp_path):
    """Another --batch-size keeps the settings (the rerun skips all); another --microbatch redoes all."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    src, dst = simple_set(tmp_path / "src", 3), tmp_path / "dst"
    assert toy_immunize(capsys, src, dst, "--batch-size", "1")[0] == 0
    first = json.loads((dst / inputs.SETTINGS).read_text())
    assert first["microbatch"] == 1  # the CPU default
    assert toy_immunize(capsys, src, dst, "--batch-size", "3")[0] == 0
    assert report(dst)["run"]["already_done"] == 3
    assert toy_immunize(capsys, src, dst, "--microbatch", "2")[0] == 0
    again = json.loads((dst / inputs.SETTINGS).read_text())
    assert again["microbatch"] == 2 and again["settings_hash"] != first["settings_hash"]
    assert report(dst)["run"]["already_done"] == 0

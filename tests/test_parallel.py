"""Sharding over devices and hosts gives the single-device result."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from leat_jax.parallel import process_share
from tests.golden_harness import REPO


def _worker(out, host_devices, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.parallel_worker", str(out),
           "--host-devices", str(host_devices), *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "one.npz"
    _finish(_worker(path, 1))
    return dict(np.load(path))


def test_four_devices_match_one(one_device, tmp_path):
    path = tmp_path / "four.npz"
    _finish(_worker(path, 4))
    four = dict(np.load(path))
    assert int(four["n_devices"]) == 4 and int(one_device["n_devices"]) == 1
    # 7 images on 4 devices: the padded last shard is dropped.
    assert four["protected"].shape == one_device["protected"].shape
    np.testing.assert_allclose(four["protected"], one_device["protected"], atol=1e-6)
    np.testing.assert_allclose(four["dist_end"], one_device["dist_end"], rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_cover_the_work_like_one(one_device, tmp_path):
    coord = f"127.0.0.1:{_free_port()}"
    procs = [
        _worker(tmp_path / f"p{i}.npz", 2, "--coordinator", coord, "--num-processes", 2, "--process-id", i)
        for i in range(2)
    ]
    for p in procs:
        _finish(p)
    parts = [dict(np.load(tmp_path / f"p{i}.npz")) for i in range(2)]
    assert all(int(p["process_count"]) == 2 for p in parts)
    index = np.concatenate([p["index"] for p in parts])
    assert sorted(index.tolist()) == list(range(len(one_device["index"])))  # disjoint and complete
    protected = np.empty_like(one_device["protected"])
    for p in parts:
        protected[p["index"]] = p["protected"]
    np.testing.assert_allclose(protected, one_device["protected"], atol=1e-6)


def test_process_share_is_disjoint_and_complete():
    items = list(range(11))
    shares = [process_share(items, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == items
    with pytest.raises(ValueError):
        process_share(items, 3, 3)

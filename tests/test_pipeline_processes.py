"""`leat-jax immunize` in child processes: killed mid-run, on 4 host devices,
as two `jax.distributed` processes, and without root's file permissions.

Each child runs the real command (``python -m leat_jax immunize``) on the toy
victims; its files are compared byte for byte with a run in this process.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from leat_jax.pipeline import inputs
from tests.golden_harness import REPO
from tests.pipeline_toys import ENV

# toy_victims: the autouse fixture that makes the toy victims known in this process too
from tests.test_pipeline_immunize import ATTACK, immunize, noise, outputs, report, simple_set, toy_victims  # noqa: F401


def _env(host_devices: int = 1) -> dict:
    env = {**os.environ, **ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={host_devices}"])
    return env


def _command(src, dst, *extra, attack=ATTACK, module="leat_jax"):
    return [sys.executable, "-m", module, "immunize", str(src), str(dst), *attack, *extra]


def _run(cmd, host_devices=1, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, env=_env(host_devices), capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mixed_set(folder: Path) -> Path:
    """7 images of 24x24 and 2 of 20x28: on 4 devices, both sizes end in a padded batch."""
    simple_set(folder, 7)
    for i in range(2):
        Image.fromarray(noise(h=20, w=28)).save(folder / f"wide{i}.png")
    return folder


def test_killed_mid_run_resumes_to_identical_files(tmp_path, capsys):
    src, dst = simple_set(tmp_path / "src", 10), tmp_path / "killed"
    slow = [*ATTACK[:3], "--iterations", "150", *ATTACK[5:]]  # slow enough to be caught in the middle
    proc = subprocess.Popen(_command(src, dst, "--quiet", attack=slow), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = dst / inputs.STATE_DIR / "manifest-0.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    done_before = manifest.read_text().count('"status": "done"')
    assert 2 <= done_before < 10, "the run was not caught in the middle"

    # Nothing partial: whatever reached the output tree is a whole image.
    assert not list(dst.glob("**/*.part")) or all(inputs.STATE_DIR in p.parts for p in dst.glob("**/*.part"))
    for path in outputs(dst):
        Image.open(dst / path).load()

    rc, err = immunize(capsys, src, dst, attack=slow)
    assert rc == 0, err
    assert report(dst)["run"]["already_done"] >= done_before
    rc, err = immunize(capsys, src, tmp_path / "uninterrupted", attack=slow)
    assert rc == 0, err
    assert outputs(dst) == outputs(tmp_path / "uninterrupted") and len(outputs(dst)) == 10


def test_four_host_devices_give_the_files_of_one(tmp_path, capsys):
    src = _mixed_set(tmp_path / "src")
    proc = _run(_command(src, tmp_path / "four"), host_devices=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 cpu device(s), batch 4" in proc.stderr
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    assert outputs(tmp_path / "four") == outputs(tmp_path / "one") and len(outputs(tmp_path / "one")) == 9
    assert report(tmp_path / "four")["run"]["devices"] == 4


def test_two_distributed_processes_share_the_folder_without_overlap(tmp_path, capsys):
    src, dst = _mixed_set(tmp_path / "src"), tmp_path / "dst"
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _command(src, dst, "--distributed", "--coordinator", coordinator, "--num-processes", "2",
                     "--process-id", str(i)),
            cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
        assert "Traceback" not in log
    shares = []
    for i in range(2):
        lines = (dst / inputs.STATE_DIR / f"manifest-{i}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert all(r["status"] == "done" and r["process"] == i for r in records)
        shares.append({r["path"] for r in records})
    assert shares[0] and shares[1] and not shares[0] & shares[1]  # disjoint
    assert shares[0] | shares[1] == {p.name for p in src.iterdir()}  # complete
    rep = report(dst)  # written by process 0, after both finished
    assert rep["run"]["processes"] == 2 and rep["totals"]["done"] == 9 and rep["totals"]["missing"] == 0

    assert immunize(capsys, src, tmp_path / "single")[0] == 0
    assert outputs(dst) == outputs(tmp_path / "single")


def test_unreadable_input_and_unwritable_dst(tmp_path):
    """Run without root's power over permissions (``tests.pipeline_child``)."""
    src = simple_set(tmp_path / "src", 1)
    Image.fromarray(noise()).save(src / "secret.png")
    (src / "secret.png").chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = _run(_command(src, tmp_path / "dst", module="tests.pipeline_child"))
        errors = [line for line in proc.stderr.splitlines() if line.startswith("leat-jax: error:")]
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert any("secret.png: cannot read (Permission denied)" in line for line in errors), proc.stderr
        assert set(outputs(tmp_path / "dst")) == {"img0.png"}

        proc = _run(_command(src, locked / "dst", module="tests.pipeline_child"))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "cannot write to the output folder (Permission denied)" in lines[0]
    finally:
        (src / "secret.png").chmod(0o644)
        locked.chmod(0o755)

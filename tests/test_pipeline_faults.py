"""Faults of the immunize job itself: out of device memory, disk full, output folder gone; exit codes.

Faults are injected in-process (the attack or the file writes replaced by
failing ones) on small stand-in victims and tiny images.
"""
from __future__ import annotations

import errno
import json
import subprocess
import sys

import jax
import pytest
from PIL import Image

from leat_jax import cli, parallel
from leat_jax.pipeline import aligned, faults, inputs, writing
from tests.golden_harness import REPO
from tests.pipeline_toys import ENV
from tests.test_pipeline_immunize import (  # noqa: F401
    ATTACK,
    immunize,
    noise,
    outputs,
    report,
    simple_set,
    toy_victims,
)


def _records(dst) -> list[dict]:
    return [json.loads(line) for line in (dst / inputs.STATE_DIR / "manifest-0.jsonl").read_text().splitlines()]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("leat-jax: error:")]


def test_out_of_memory_at_batch_8_finishes_at_batch_4_with_identical_files(tmp_path, capsys, monkeypatch):
    src = simple_set(tmp_path / "src", 11)
    assert immunize(capsys, src, tmp_path / "plain", "--batch-size", "4")[0] == 0
    real, sizes = parallel.sharded_attack, []

    def small_device(victims, config, mesh, params, x, ids, seed, *microbatch):
        sizes.append(x.shape[0])
        if x.shape[0] >= 8:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB")
        return real(victims, config, mesh, params, x, ids, seed, *microbatch)

    monkeypatch.setattr(parallel, "sharded_attack", small_device)
    rc, err = immunize(capsys, src, tmp_path / "oom", "--batch-size", "8")
    assert rc == 0, err
    assert sizes[0] == 8 and set(sizes[1:]) == {4} and len(sizes) == 1 + 3  # 11 images: 4 + 4 + 3 (padded)
    assert outputs(tmp_path / "oom") == outputs(tmp_path / "plain") and len(outputs(tmp_path / "plain")) == 11
    run = report(tmp_path / "oom")["run"]["per_process"][0]
    assert run["out_of_memory"] == [{"batch": 8, "retried_at": 4}] and run["batch"] == 4


def test_out_of_memory_at_one_image_per_device_stops_the_job(tmp_path, capsys, monkeypatch):
    src = simple_set(tmp_path / "src", 3)

    def no_memory(*args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9GiB")

    monkeypatch.setattr(parallel, "sharded_attack", no_memory)
    rc, err = immunize(capsys, src, tmp_path / "dst", "--batch-size", "2")
    assert rc == cli.EXIT_JOB_FAILED == 3
    assert len(_errors(err)) == 1 and "device out of memory at 1 image(s) per device, the microbatch" in _errors(err)[0]


def test_disk_full_stops_the_job_with_exit_3_and_keeps_what_is_done(tmp_path, capsys, monkeypatch):
    src, dst = simple_set(tmp_path / "src", 12), tmp_path / "dst"
    real, written = writing.write_synced, []

    def filling_disk(path, data):
        if data.startswith(b"\x89PNG"):
            written.append(path)
            if len(written) > 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(writing, "write_synced", filling_disk)
    rc, err = immunize(capsys, src, dst)
    assert rc == 3, err
    last = _errors(err)[-1]
    assert "No space left on device" in last and "the job stopped" in last and str(dst) in last
    records = _records(dst)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == faults.SAME_FAULT_LIMIT and all(r["fault"] == "No space left on device" for r in failed)
    assert len(outputs(dst)) == 3 == sum(r["status"] == "done" for r in records)  # the done ones are kept
    assert len(records) < 12  # it stopped rather than failing every image


def test_vanished_output_folder_stops_the_job_with_exit_3(tmp_path, capsys, monkeypatch):
    src, dst = simple_set(tmp_path / "src", 12), tmp_path / "dst"
    real, calls = parallel.sharded_attack, []

    def then_remove(*args):
        calls.append(1)
        if len(calls) == 3:  # as an unmount would: the whole folder at once
            dst.rename(dst.with_name("moved"))
        return real(*args)

    monkeypatch.setattr(parallel, "sharded_attack", then_remove)
    rc, err = immunize(capsys, src, dst)
    assert rc == 3, err
    assert f"{dst}: {writing.GONE}; the job stopped" in _errors(err)[-1]
    assert len(calls) < 12


def test_a_second_run_hits_the_compilation_cache(tmp_path):
    src, cache = simple_set(tmp_path / "src", 2), tmp_path / "cache"
    env = {**__import__("os").environ, **ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    stats = []
    for name in ("first", "second"):
        cmd = [sys.executable, "-m", "leat_jax", "immunize", str(src), str(tmp_path / name), *ATTACK, "--quiet",
               "--compile-cache", str(cache)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats.append(report(tmp_path / name)["run"]["per_process"][0]["compile_cache"])
    assert stats[0]["folder"] == str(cache) and stats[0]["misses"] >= 1 and stats[0]["hits"] == 0
    assert stats[1]["hits"] >= 1 and stats[1]["misses"] == 0  # nothing compiled again
    assert outputs(tmp_path / "first") == outputs(tmp_path / "second")
    assert any(cache.iterdir())


def test_no_compile_cache_and_bad_values(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 1)
    assert immunize(capsys, src, tmp_path / "off", "--no-compile-cache")[0] == 0
    assert report(tmp_path / "off")["run"]["per_process"][0]["compile_cache"] == {"folder": None, "hits": 0,
                                                                                 "misses": 0}
    with pytest.raises(SystemExit) as e:
        cli.main(["immunize", str(src), str(tmp_path / "x"), "--no-compile-cache", "--compile-cache", "d"])
    assert e.value.code == 2


def test_each_image_size_compiles_its_own_attack_and_many_sizes_are_announced(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i, (h, w) in enumerate([(8, 8), (8, 12), (12, 8), (8, 8)]):
        Image.fromarray(noise(h, w)).save(src / f"img{i}.png")
    monkeypatch.setattr(aligned, "SIZES_WARNING", 2)
    rc, err = immunize(capsys, src, tmp_path / "dst")
    assert rc == 0, err
    assert err.count("image sizes so far; each compiles its own attack") == 1 and "warning: 2 image sizes" in err
    assert report(tmp_path / "dst")["run"]["per_process"][0]["image_sizes"] == 3  # three programs, no bucket

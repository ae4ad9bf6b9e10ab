"""The Ray engine's stages and driver with Ray Data replaced by a plain loop over the same functions.

Runs without a cluster (and without Ray installed): the rows go through
``list_shard`` (folder jobs), ``read_row``/``read_shard``, the ``Attacker`` actor class and
``write_row``/``write_shard`` in this process, and ``run`` drives them as it
drives Ray Data. The cluster tests are in ``test_engine_ray.py``.
"""
from __future__ import annotations

import json
import os
import socket
import types

import numpy as np
import pytest

from leat_jax.engines import ray_engine, shard_stages
from leat_jax.pipeline import inputs, manifest, photos, sinks, sources, victimset
from tests.engine_toys import DAMAGED, mixed_set, wording
from tests.pipeline_toys import ENV
from tests.test_pipeline_immunize import immunize, outputs, report, toy_victims  # noqa: F401
from tests.test_pipeline_photos import ATTACK as PHOTO_ATTACK
from tests.test_pipeline_photos import FakeDetector, make_photos
from tests.test_storage import dead_pid, s3  # noqa: F401


class LocalDataset:
    """What ``ray_engine.dataset`` builds, run row by row in this process."""

    def __init__(self, ray, rows, cfg, ctx, actors, gpus, sharded=False, listing=None):
        self.cfg, self.ctx = cfg, ctx
        # a folder job's rows are shard numbers, expanded by the list stage
        self.rows = rows if listing is None else [r for s in rows for r in ray_engine.list_shard(s, **listing)]
        self.read, self.write = ((shard_stages.read_shard, shard_stages.write_shard) if sharded
                                 else (ray_engine.read_row, ray_engine.write_row))

    def iter_rows(self):
        attacker = ray_engine.Attacker(self.cfg, self.ctx)
        for r in self.rows:
            r = self.read(r, self.ctx)
            out = attacker({k: np.asarray([v], dtype=object) for k, v in r.items()})
            yield self.write({k: v[0] for k, v in out.items()}, self.ctx)


@pytest.fixture
def local(monkeypatch):
    fake = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 2.0},
                                 shutdown=lambda: None)
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_engine, "dataset", LocalDataset)


def test_folder_rows_write_the_files_of_the_in_process_engine(local, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 6)
    (src / "b" / "broken.png").write_bytes(b"\x89PNG nothing")
    assert immunize(capsys, src, tmp_path / "one")[0] == 1
    rc, err = immunize(capsys, src, tmp_path / "two", "--engine", "ray")
    assert rc == 1 and [line for line in err.splitlines() if "error: " in line][0].startswith(
        f"leat-jax: error: {src / 'b' / 'broken.png'}: ")
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one") and len(outputs(tmp_path / "one")) == 6
    got = report(tmp_path / "two")
    assert got["totals"]["done"] == 6 and got["totals"]["failed"] == 1
    rc, _ = immunize(capsys, src, tmp_path / "two", "--engine", "ray")  # done images skipped, the broken one retried
    assert rc == 1 and report(tmp_path / "two")["run"]["already_done"] == 6


def test_shard_rows_write_the_files_of_the_in_process_engine(local, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 5)
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    files = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in sorted(src.rglob("*.png"))]
    shards_in = tmp_path / "shards"
    shards_in.mkdir()
    (shards_in / "s0.tar").write_bytes(sinks.encode_shard("tar", files[:2]))
    (shards_in / "s1.parquet").write_bytes(sinks.encode_shard("parquet", files[2:]))
    rc, err = immunize(capsys, f"file://{shards_in}", tmp_path / "out", "--engine", "ray")
    assert rc == 0, err
    got = {}
    for name, kind in (("s0.tar", "tar"), ("s1.parquet", "parquet")):
        shard = sources.Shard(str(tmp_path / "out" / name), name, kind, "")
        got.update({k: b for k, b, _ in sources.members(shard, sources.read_bytes(shard.url))})
    assert got == outputs(tmp_path / "one")
    assert report(tmp_path / "out")["totals"]["done"] == 5 and (tmp_path / "out" / inputs.SETTINGS).exists()
    rc, _ = immunize(capsys, shards_in, tmp_path / "out", "--engine", "ray")
    assert rc == 0 and report(tmp_path / "out")["run"]["already_done"] == 5
    assert report(tmp_path / "out")["run"]["protected"] == 0


def test_a_parquet_shard_without_its_key_column_fails_alone(local, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = mixed_set(tmp_path / "src", 1)
    shards_in = tmp_path / "shards"
    shards_in.mkdir()
    (shards_in / "a.tar").write_bytes(sinks.encode_shard("tar", [("img0.png", (src / "b" / "img0.png").read_bytes())]))
    pq.write_table(pa.table({"name": ["x.png"], "image": [b"x"]}), shards_in / "b.parquet")
    rc, err = immunize(capsys, shards_in, tmp_path / "out", "--engine", "ray")
    errors = [line for line in err.splitlines() if "error: " in line]
    assert rc == 1 and len(errors) == 2 and errors[0].endswith("b.parquet: no 'key' column (columns: name, image)")
    assert errors[1].startswith("leat-jax: error: 1 image(s) failed")  # the summary line
    assert sinks.committed(str(tmp_path / "out" / "a.tar"), report(tmp_path / "out")["settings"]["settings_hash"],
                           sources.list_shards(str(shards_in / "a.tar"))[0].version) is not None


@pytest.mark.usefixtures("s3")
def test_a_sharded_job_into_a_dst_another_run_writes_is_refused(local, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 2)
    files = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in sorted(src.rglob("*.png"))]
    sinks.put(f"{tmp_path}/shards/s0.tar", sinks.encode_shard("tar", files))
    sinks.put("s3://bucket/held/in/s0.tar", sinks.encode_shard("tar", files))
    other = {"host": socket.gethostname(), "pid": os.getppid(), "run": "another", "token": "another"}
    for src_url, dst in ((f"{tmp_path}/shards", str(tmp_path / "out")), ("s3://bucket/held/in", "s3://bucket/held/out")):
        lock = f"{dst}/{inputs.STATE_DIR}/lock-p0"
        sinks.put(lock, json.dumps(other).encode())  # a live process of this host holds DST
        rc, err = immunize(capsys, src_url, dst, "--engine", "ray")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and f"pid {os.getppid()}" in err, err
        fs, path = sources.filesystem(f"{dst}/s0.tar")
        assert not fs.exists(path) and not fs.exists(path + sinks.MARKER)  # nothing written
        assert json.loads(sources.read_bytes(lock)) == other  # its lock is left alone
        sinks.put(lock, json.dumps({**other, "pid": dead_pid()}).encode())  # its holder died: the job runs
        rc, err = immunize(capsys, src_url, dst, "--engine", "ray")
        assert rc == 0 and json.loads(sources.read_bytes(f"{dst}/{inputs.REPORT}"))["totals"]["done"] == 2, err
        with pytest.raises(sources.SourceError):
            sources.read_bytes(lock)  # released at the end


def test_photos_with_faces_detected_give_the_files_of_the_in_process_engine(local, monkeypatch, tmp_path, capsys):
    detector = FakeDetector()
    monkeypatch.setattr(photos, "default_detector", lambda: detector)
    src = make_photos(tmp_path / "src")  # two faces apart, two faces overlapping, no face
    assert immunize(capsys, src, tmp_path / "one", "--faces", "detect", attack=PHOTO_ATTACK)[0] == 0
    rc, err = immunize(capsys, src, tmp_path / "two", "--faces", "detect", "--engine", "ray", attack=PHOTO_ATTACK)
    assert rc == 0, err
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one") and len(outputs(tmp_path / "one")) == 3
    one, two = manifest.read(tmp_path / "one"), manifest.read(tmp_path / "two")
    assert {p: [f["box"] for f in r["faces"]] for p, r in two.items()} == {p: [f["box"] for f in r["faces"]]
                                                                           for p, r in one.items()}
    assert report(tmp_path / "two")["totals"]["no_face"] == 1 and report(tmp_path / "two")["totals"]["done"] == 3
    assert report(tmp_path / "two")["settings"]["faces"]["detector"] == FakeDetector.identity
    rc, _ = immunize(capsys, src, tmp_path / "two", "--faces", "detect", "--engine", "ray", attack=PHOTO_ATTACK)
    assert rc == 0 and report(tmp_path / "two")["run"]["already_done"] == 3  # same settings hash: all skipped
    sinks.put(f"{tmp_path}/shards/s0.tar", sinks.encode_shard("tar", [("two.png", (src / "two.png").read_bytes())]))
    rc, err = immunize(capsys, f"{tmp_path}/shards", tmp_path / "out", "--faces", "detect", "--engine", "ray")
    assert rc == 2 and err.strip().splitlines() == ["leat-jax: error: --engine ray: --faces detect works on folders "
                                                   "and list files, not on tar or Parquet shards; use --faces aligned"]


def test_the_driver_reads_the_victims_identities_not_their_weights():
    specs = [victimset.VictimSpec("toy_a"), victimset.VictimSpec("toy_b")]
    loaded = victimset.load(specs, True, [ENV["LEAT_EXTRA_VICTIMS"]])
    identities = victimset.load(specs, True, [ENV["LEAT_EXTRA_VICTIMS"]], weights=False)
    assert identities.params == (None, None) and all(p is not None for p in loaded.params)
    assert (identities.identities, identities.stand_in, identities.names) == (loaded.identities, loaded.stand_in,
                                                                              loaded.names)


def test_the_identities_only_load_checks_a_checkpoints_structure_without_reading_its_arrays(tmp_path):
    from leat_jax import checkpoints
    from leat_jax.errors import SetupError
    from tests.pipeline_toys import victims

    extra = [ENV["LEAT_EXTRA_VICTIMS"]]
    params = victims()["toy_a"].init_params(0)
    ckpt = tmp_path / "ckpt"
    checkpoints.save_params(ckpt, params, {"model": "toy_a", "source_sha256": "0" * 64})
    specs = [victimset.VictimSpec("toy_a", str(ckpt))]
    for data in (p for p in (ckpt / "params").rglob("*") if p.is_file() and "ocdbt.process_0" in p.parts):
        data.write_bytes(data.read_bytes()[:8])  # every array's data cut: the structure is intact
    assert victimset.load(specs, False, extra, weights=False).identities == (f"checkpoint:{'0' * 64}:converter-None",)
    with pytest.raises(SetupError) as restored:
        victimset.load(specs, False, extra)
    assert f"{ckpt}{DAMAGED}" in str(restored.value)
    flat = checkpoints.flatten(params)
    name = sorted(flat)[0]
    checkpoints.save_params(ckpt, checkpoints.unflatten({**flat, name: np.zeros(3, np.float32)}),
                            {"model": "toy_a"})
    with pytest.raises(SetupError, match=f"{name} has shape \\(3,\\)"):
        victimset.load(specs, False, extra, weights=False)
    (ckpt / "params" / "_METADATA").unlink()
    with pytest.raises(SetupError) as checked:
        victimset.load(specs, False, extra, weights=False)
    assert f"{ckpt}{DAMAGED}" in str(checked.value) and str(checked.value).endswith("; run `leat-jax convert` again")
    assert wording(str(checked.value)) == wording(str(restored.value))  # the restore's line, but for orbax's words


def test_an_attack_actor_that_cannot_load_the_weights_stops_a_sharded_job_with_its_one_line(local, tmp_path, capsys):
    from leat_jax import checkpoints
    from tests.pipeline_toys import victims
    from tests.test_pipeline_immunize import ATTACK

    src = mixed_set(tmp_path / "src", 1)
    ckpt = tmp_path / "ckpt"
    checkpoints.save_params(ckpt, victims()["toy_a"].init_params(0), {"model": "toy_a"})
    data = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:16])  # the arrays' data cut: the driver's check passes, the actor's load fails
    attack = ["--victims", f"toy_a={ckpt},toy_b", "--stand-in-weights", *ATTACK[3:]]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "s0.tar").write_bytes(sinks.encode_shard("tar", [("a.png", (src / "b" / "img0.png")
                                                                                .read_bytes())]))
    rc_one, one = immunize(capsys, src, tmp_path / "one", attack=attack)
    rc, err = immunize(capsys, tmp_path / "shards", tmp_path / "out", "--engine", "ray", attack=attack)
    lines = err.strip().splitlines()  # the driver warned of the stand-in before the actors started
    assert rc == rc_one == 2 and lines[0].startswith("WARNING: stand-in weights (toy_b)") and len(lines) == 2
    assert lines[1:] == one.strip().splitlines() and f"{ckpt}{DAMAGED}" in one
    assert not (tmp_path / "out" / "s0.tar").exists() and not (tmp_path / "out" / inputs.REPORT).exists()

"""The Ray engine (``leat_jax.engines.ray_engine``) on a real local cluster, shared by the module's tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from leat_jax import cli
from leat_jax.engines import ray_engine
from leat_jax.errors import SetupError
from leat_jax.pipeline import inputs, shards, sinks, sources
from tests.engine_toys import DAMAGED, mixed_set
from tests.test_pipeline_immunize import ATTACK, immunize, noise, outputs, report, toy_victims  # noqa: F401
from tests.test_pipeline_photos import SAMPLES
from tests.test_storage import s3  # noqa: F401

ray = pytest.importorskip("ray")
# The one line of Ray's own a job may print: the driver's core worker notes, once per process, that Ray Data's actors
# restart from arguments in the object store (ray-project/ray#53727). Ray 2.60 has no switch for it but
# RAY_BACKEND_LOG_LEVEL, which prints a line of its own in its place.
ACTOR_RESTART_NOTE = "has constructor arguments in the object store and max_restarts > 0"


@pytest.fixture(scope="module")
def cluster(request):
    """One local cluster for the module, started as the engine starts one (2 CPUs), stopped afterwards.

    Started after the S3 server, so its workers see the endpoint in their environment.
    """
    request.getfixturevalue("s3")
    ray_engine.import_ray()  # Ray Data's log handler takes the stderr of now, not of a test's capsys (closed after it)
    assert ray_engine.connect(ray, None, num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_pool_size_is_a_range():
    assert ray_engine.pool_size(None, 0) == (1, 1) and ray_engine.pool_size(None, 8) == (1, 8)
    assert ray_engine.pool_size("3", 0) == (3, 3) and ray_engine.pool_size("2-6", 0) == (2, 6)
    for bad in ("0", "5-2", "x", "1-"):
        with pytest.raises(SetupError, match="--ray-actors"):
            ray_engine.pool_size(bad, 0)


def listening(pids) -> list:
    """(pid, address) of every TCP socket a process of ``pids`` listens at."""
    return [(c.pid, c.laddr) for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids]


def http_status(port: int, path: str) -> tuple[int, bytes]:
    """(status, head) of ``GET path`` at 127.0.0.1:``port``; (0, b"") where no HTTP server answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = s.recv(4096)
    except OSError:
        return 0, b""
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return (int(found[1]), head) if found else (0, b"")


def serves_jobs_api(port: int) -> bool:
    """Whether 127.0.0.1:``port`` serves a Ray jobs API: the dashboard's (``/api/jobs/``, JSON) or a node
    agent's (``/api/job_agent/jobs/``, POST only: a GET is refused as the wrong method)."""
    status, head = http_status(port, "/api/jobs/")
    return (status == 200 and b"json" in head.lower()) or http_status(port, "/api/job_agent/jobs/")[0] == 405


def test_started_cluster_listens_on_loopback_only_and_has_no_jobs_api(cluster):
    actor = cluster.remote(num_cpus=0)(type("Probe", (), {"pid": lambda self: os.getpid()})).remote()
    assert cluster.get(actor.pid.remote()) > 0  # a worker process beside the prestarted ones
    ours = {p.pid: p for p in psutil.Process().children(recursive=True)} | {os.getpid(): psutil.Process()}
    names = {p.name() for p in ours.values()}
    assert {"gcs_server", "raylet"} <= names, names  # these are the cluster's processes
    heads = [p.cmdline() for p in ours.values() if any(a.endswith("dashboard/dashboard.py") for a in p.cmdline())]
    # Without the dashboard Ray's head process loads the usage-stats module alone: no jobs API, no frontend.
    assert all("--modules-to-load=UsageStatsHead" in c and "--disable-frontend" in c for c in heads), heads
    found = listening(ours)
    assert {"gcs_server", "raylet"} <= {ours[pid].name() for pid, _ in found} and len(found) >= 5, found
    assert [a for _, a in found if not ray_engine.is_loopback(a.ip)] == []  # none on 0.0.0.0, [::] or a host address
    assert not [a.port for _, a in found if serves_jobs_api(a.port)]
    cluster.kill(actor)


def test_loopback_addresses():
    assert all(map(ray_engine.is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(ray_engine.is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1", "", None, "host"]))
    assert ray_engine.address_host("ray://[::1]:10001") == "::1" and ray_engine.address_host("auto") is None
    assert ray_engine.address_host("127.0.0.1:6379") == "127.0.0.1"


def test_ray_engine_writes_the_files_of_the_in_process_engine(cluster, tmp_path, capsys):
    src = mixed_set(tmp_path / "src")
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    rc, err = immunize(capsys, src, tmp_path / "ray", "--engine", "ray", "--ray-actors", "2")
    assert rc == 0, err
    expected = outputs(tmp_path / "one")
    assert len(expected) == 6 and outputs(tmp_path / "ray") == expected  # byte-identical
    got = report(tmp_path / "ray")
    assert got["totals"]["done"] == 6 and got["run"]["per_process"][0]["actors"] == [2, 2]
    lines = [json.loads(line) for f in (tmp_path / "ray" / inputs.STATE_DIR / "shards").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == sorted(expected)  # each image recorded once
    markers = list((tmp_path / "ray" / inputs.STATE_DIR / "shards").glob("*.done"))
    assert len(markers) == len({shards.shard_of(rel) for rel in expected})
    # a rerun finds every shard done: nothing is read, attacked or written again
    rc, _ = immunize(capsys, src, tmp_path / "ray", "--engine", "ray")
    assert rc == 0 and report(tmp_path / "ray")["run"]["already_done"] == 6
    assert outputs(tmp_path / "ray") == expected


def test_ray_engine_bad_settings_are_one_line_errors(tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 1)
    rc, err = immunize(capsys, src, tmp_path / "out", "--engine", "ray", "--ray-actors", "0")
    assert rc == 2 and err.strip().splitlines() == ["leat-jax: error: --ray-actors: expected N or MIN-MAX "
                                                   "(1 <= MIN <= MAX), got '0'"]
    with socket.socket() as s:  # a port nothing listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err = immunize(capsys, src, tmp_path / "out", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert rc == 2 and err.strip().splitlines() == [
        f"leat-jax: error: --ray-address 127.0.0.1:{port}: nothing answers there (Connection refused); "
        "start the cluster first (ray start --head)"]
    rc, err = immunize(capsys, f"file://{tmp_path}/nowhere", tmp_path / "out", "--engine", "ray")
    assert rc == 2 and err.strip().splitlines() == [f"leat-jax: error: file://{tmp_path}/nowhere: no such file, "
                                                   "folder or object prefix"]


def test_a_damaged_checkpoint_is_the_in_process_engines_one_line_and_a_repaired_rerun_resumes(cluster, tmp_path,
                                                                                               capsys):
    """Damage the driver's check finds (no actor starts) and damage inside the arrays (the attack actors find it,
    the driver raises it): each the in-process engine's one line, exit code 2, done work kept."""
    from leat_jax import checkpoints
    from tests.pipeline_toys import victims

    src = mixed_set(tmp_path / "src", 2)
    ckpt, dst = tmp_path / "ckpt", tmp_path / "ray"
    checkpoints.save_params(ckpt, victims()["toy_a"].init_params(0), {"model": "toy_a", "source_sha256": "0" * 64})
    attack = ["--victims", f"toy_a={ckpt},toy_b", "--stand-in-weights", *ATTACK[3:]]
    assert immunize(capsys, src, dst, "--engine", "ray", attack=attack)[0] == 0
    done = outputs(dst)
    Image.fromarray(noise(24, 24)).save(src / "new.png")  # work for the next run

    def both_engines(reason: str) -> str:
        """The Ray engine's error line, checked against the in-process engine's for the same damage."""
        rc_one, one = immunize(capsys, src, tmp_path / "one", attack=attack)
        rc, err = immunize(capsys, src, dst, "--engine", "ray", attack=attack)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING: stand-in")]
        assert rc == rc_one == 2 and len(lines) == 1 and str(ckpt) in lines[0] and reason in lines[0], err
        assert reason in one, one
        assert outputs(dst) == done and committed(dst) == set(done)  # nothing done is lost, nothing half-recorded
        return lines[0], one.strip()

    data = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    whole = data.read_bytes()
    data.write_bytes(whole[:len(whole) // 2])  # the arrays' data cut: only a restore sees it
    ray_line, one_line = both_engines(DAMAGED)
    assert ray_line == one_line  # the actor's own error, word for word
    assert ray_line.endswith("; run `leat-jax convert` again")
    deadline = time.monotonic() + 30
    while attack_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not attack_actors()  # the failed job's attack pool does not linger on the cluster
    data.write_bytes(whole)
    meta = (ckpt / "meta.json").read_text()
    (ckpt / "meta.json").write_text(json.dumps({"model": "toy_b"}))
    ray_line, one_line = both_engines("not 'toy_a'")
    assert ray_line == one_line
    (ckpt / "meta.json").write_text(meta)
    shutil.move(ckpt / "params", tmp_path / "aside")
    ray_line, one_line = both_engines(DAMAGED)  # both find it in the structure check now
    assert ray_line == one_line  # both find it in the structure check, before any weight is read
    shutil.move(tmp_path / "aside", ckpt / "params")  # repaired: the rerun does the new image only
    rc, err = immunize(capsys, src, dst, "--engine", "ray", attack=attack)
    assert rc == 0 and report(dst)["run"]["already_done"] == 2 and report(dst)["run"]["protected"] == 1, err
    assert {k: v for k, v in outputs(dst).items() if k in done} == done and "new.png" in outputs(dst)


def test_tar_and_parquet_shards_give_the_files_of_the_in_process_engine(cluster, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 4)
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    expected = outputs(tmp_path / "one")
    files = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in sorted(src.rglob("*.png"))]
    shards_in = tmp_path / "shards"
    (shards_in / "t").mkdir(parents=True)
    (shards_in / "t" / "s0.tar").write_bytes(sinks.encode_shard("tar", files[:3] + [("zz.png", b"\x89PNG junk")]))
    (shards_in / "s1.parquet").write_bytes(sinks.encode_shard("parquet", files[3:]))
    (shards_in / "bad.tar").write_bytes(b"not a tar" * 200)
    rc, err = immunize(capsys, shards_in, tmp_path / "out", "--engine", "ray", "--ray-actors", "2")
    errors = sorted(line for line in err.splitlines() if "error" in line)
    assert rc == 1 and len(errors) == 3, err  # the unreadable shard and the corrupt member fail alone, one line each
    assert errors[0].startswith("leat-jax: error: 2 image(s) failed")  # the summary line
    assert errors[1].startswith("leat-jax: error: file://") and "bad.tar: not a readable tar shard" in errors[1]
    assert errors[2].startswith("leat-jax: error: t/s0.tar/zz.png: ")
    out_tar = sources.Shard(str(tmp_path / "out" / "t" / "s0.tar"), "t/s0.tar", "tar", "")
    out_pq = sources.Shard(str(tmp_path / "out" / "s1.parquet"), "s1.parquet", "parquet", "")
    got = {k: b for s in (out_tar, out_pq) for k, b, _ in sources.members(s, sources.read_bytes(s.url))}
    assert got == expected  # byte-identical, tar members and Parquet keys by the same names
    assert report(tmp_path / "out")["totals"]["done"] == 4
    assert sorted(f["path"] for f in report(tmp_path / "out")["failures"]) == ["bad.tar", "zz.png"]
    # a rerun skips both committed shards; a shard without its marker (half-written) is redone
    (tmp_path / "out" / ("s1.parquet" + sinks.MARKER)).unlink()
    rc, err = immunize(capsys, shards_in, tmp_path / "out", "--engine", "ray")
    assert rc == 1 and report(tmp_path / "out")["run"]["protected"] == 1  # bad.tar is tried again, and fails
    assert report(tmp_path / "out")["run"]["already_done"] == 3 and report(tmp_path / "out")["totals"]["done"] == 4


def test_an_attack_actor_killed_mid_job_loses_nothing(cluster, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 12)
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    dst, result = tmp_path / "ray", {}
    job = threading.Thread(target=lambda: result.update(rc=cli.main(
        ["immunize", str(src), str(dst), *ATTACK, "--quiet", "--engine", "ray", "--ray-actors", "2"])))
    job.start()
    killed, up = None, None
    while job.is_alive() and killed is None:
        written, alive = manifest_lines(dst), attack_actors()
        up = up or (alive and time.monotonic())
        # The first actor up (the pool hands it work before the second is up), once records exist or 1 s after it
        # came up (setup done, its first images in hand; here records came 1.6 s after it, and the actors were gone
        # 1 s later, before the records caught up: waiting for records alone once lost that race in CI).
        if alive and written < 12 and (written > 0 or time.monotonic() - up > 1.0):
            os.kill(alive[0]["Pid"], signal.SIGKILL)  # the actor's process dies, as on a lost node
            killed = written
        time.sleep(0.02)
    job.join()
    print(f"\nattack actor killed after {killed} of 12 records")
    assert killed is not None and result["rc"] == 0  # killed mid-job, and the job completed
    assert outputs(dst) == outputs(tmp_path / "one")
    recorded = [json.loads(line)["path"] for f in (dst / inputs.STATE_DIR / "shards").glob("*.jsonl")
                for line in f.read_text().splitlines()]
    assert sorted(recorded) == sorted(outputs(dst))  # nothing recorded twice, nothing lost


def test_a_driver_killed_mid_job_and_rerun_loses_nothing(cluster, tmp_path, capsys):
    """A driver process joins the module's cluster, is SIGKILLed once outputs exist, and the same command is rerun."""
    n = 16
    src = mixed_set(tmp_path / "src", n)
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    dst, root = tmp_path / "ray", Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "leat_jax", "immunize", str(src), str(dst), *ATTACK, "--quiet", "--engine",
               "ray", "--ray-address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while driver.poll() is None and not 0 < manifest_lines(dst) < n:
            time.sleep(0.02)
        joined = listening({driver.pid})  # a driver joining at a loopback address listens there too
        driver.send_signal(signal.SIGKILL)
        assert driver.wait() == -signal.SIGKILL  # killed mid-job, not finished
        assert joined and all(ray_engine.is_loopback(a.ip) for _, a in joined), joined
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30
    while attack_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not attack_actors()  # the dead driver's attack pool does not linger on the cluster
    before = committed(dst)
    assert 0 < len(before) < n and all(outputs(dst)[rel] == outputs(tmp_path / "one")[rel] for rel in before)
    rerun = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    # a fresh driver's stderr: our lines, and of Ray's own at most its note on actor restarts
    theirs = [line for line in rerun.stderr.splitlines() if not line.startswith(("leat-jax: ", "WARNING: stand-in"))]
    assert len(theirs) <= 1 and all(ACTOR_RESTART_NOTE in line for line in theirs), rerun.stderr
    assert outputs(dst) == outputs(tmp_path / "one")  # byte-identical to the uninterrupted run
    recorded = [json.loads(line)["path"] for f in (dst / inputs.STATE_DIR / "shards").glob("*.jsonl")
                for line in f.read_text().splitlines()]
    assert sorted(recorded) == sorted(outputs(dst))  # nothing recorded twice, nothing committed lost
    assert report(dst)["totals"]["done"] == n and report(dst)["run"]["already_done"] == len(before)


def attack_actors() -> list[dict]:
    """The cluster's live attack actors (the tests run one job at a time)."""
    return [a for a in ray._private.state.actors().values() if a["State"] == "ALIVE" and "MapWorker" in
            a["ActorClassName"]]


def committed(dst) -> set[str]:
    """The paths the shards' manifests hold as done."""
    return {rec["path"] for f in (dst / inputs.STATE_DIR / "shards").glob("*.jsonl")
            for rec in map(json.loads, f.read_text().splitlines()) if rec["status"] == "done"}


def manifest_lines(dst) -> int:
    try:
        return len((dst / inputs.STATE_DIR / "manifest-0.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_s3_source_and_sink(cluster, tmp_path, capsys):
    src = mixed_set(tmp_path / "src", 3)
    assert immunize(capsys, src, tmp_path / "one")[0] == 0
    files = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in sorted(src.rglob("*.png"))]
    sinks.put("s3://bucket/job/in/s0.tar", sinks.encode_shard("tar", files))
    rc, err = immunize(capsys, "s3://bucket/job/in", "s3://bucket/job/out", "--engine", "ray")
    assert rc == 0, err
    out = sources.Shard("s3://bucket/job/out/s0.tar", "s0.tar", "tar", "")
    got = {k: b for k, b, _ in sources.members(out, sources.read_bytes(out.url))}
    assert got == outputs(tmp_path / "one")  # written once, no rename: byte-identical all the same
    marker = json.loads(sources.read_bytes(out.url + sinks.MARKER))
    assert sorted(r["path"] for r in marker["records"]) == sorted(got)
    assert json.loads(sources.read_bytes(f"s3://bucket/job/out/{inputs.REPORT}"))["totals"]["done"] == 3


def test_faces_detected_on_the_cluster_give_the_file_of_the_in_process_engine(cluster, tmp_path, capsys):
    """The shipped detector, loaded in the attack actor as the command loads it, on the sample photo."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", src / "astronaut.png")
    attack = ["--victims", "toy_a", "--stand-in-weights", "--iterations", "2", "--eps", "0.051", "--step", "0.02",
              "--faces", "detect"]
    assert immunize(capsys, src, tmp_path / "one", attack=attack)[0] == 0
    rc, err = immunize(capsys, src, tmp_path / "ray", "--engine", "ray", attack=attack)
    assert rc == 0, err
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "one") and len(outputs(tmp_path / "one")) == 1
    assert outputs(tmp_path / "ray")["astronaut.png"] != (src / "astronaut.png").read_bytes()
    faces = [report(d)["settings"]["faces"]["detector"] for d in (tmp_path / "one", tmp_path / "ray")]
    assert faces[0] == faces[1] and faces[0].startswith("leat_jax.faces.detect.Detector:params-")
    assert report(tmp_path / "ray")["totals"]["done"] == 1 and report(tmp_path / "ray")["totals"]["no_face"] == 0

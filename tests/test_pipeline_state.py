"""State that scales: streamed listing, shards, done markers, size-and-time skips, the lock, kill and resume."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

from PIL import Image

from leat_jax.pipeline import inputs, reading, shards
from leat_jax.pipeline.resume import Resume
from tests.golden_harness import REPO
from tests.pipeline_toys import ENV
from tests.test_pipeline_immunize import ATTACK, immunize, noise, outputs, report, simple_set, toy_victims  # noqa: F401


def test_listing_streams_one_directory_at_a_time_sorted_within_it(tmp_path):
    for rel in ("b/z.png", "b/a.png", "a.png", "c.jpg", "c.png", "b/d/x.png", "b/d/w.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(4, 4)).save(tmp_path / rel)
    got = [(i.rel, i.output) for i in inputs.stream(tmp_path, tmp_path / "out")]
    assert got == [("a.png", "a.png"), ("c.jpg", "c.jpg.png"), ("c.png", "c.png"), ("b/a.png", "b/a.png"),
                   ("b/z.png", "b/z.png"), ("b/d/w.png", "b/d/w.png"), ("b/d/x.png", "b/d/x.png")]
    assert sorted(got) == sorted((i.rel, i.output) for i in inputs.discover(tmp_path, tmp_path / "out"))
    item = next(iter(inputs.stream(tmp_path, tmp_path / "out")))
    assert item.size == (tmp_path / "a.png").stat().st_size and item.mtime_ns == (tmp_path / "a.png").stat().st_mtime_ns


def test_shards_depend_on_the_path_only_and_split_by_process(tmp_path):
    items = [inputs.Item(f"d/{i}.png", tmp_path / f"{i}.png", f"d/{i}.png", None, i, i) for i in range(500)]
    assert shards.shard_of("d/1.png") == 224  # a stable hash: the same in every process and run
    assert len({shards.shard_of(i.rel) for i in items}) > 100
    per = [shards.spill(items, tmp_path / f"w{p}", p, 3, tmp_path).counts for p in range(3)]
    assert sum(sum(c.values()) for c in per) == 500 and all(per)
    back = [i for p in range(3) for s in per[p] for i in shards.listing(tmp_path / f"w{p}", s)]
    found = shards.spill(items, tmp_path / "all", 0, 1, tmp_path)
    s = next(iter(found.counts))  # the walk's digest is the marker's, whatever the order
    assert found.digest(s) == shards.digest(reversed(shards.listing(tmp_path / "all", s)), tmp_path)
    assert sorted(back, key=lambda i: i.rel) == sorted(items, key=lambda i: i.rel)  # every field back


def test_records_resolve_by_order_within_the_shard_not_by_clock(tmp_path):
    store = shards.Store(tmp_path)
    store.append(7, [{"path": "a.png", "status": "done", "time": 2e9}])
    store.append(7, [{"path": "a.png", "status": "failed", "time": 1.0, "error": "x"}])  # a host whose clock is behind
    with open(tmp_path / "shards" / "7.jsonl", "ab") as f:
        f.write(b'{"path": "a.png", "sta')  # torn by a kill
    assert store.records(7)["a.png"]["status"] == "failed"
    store.append(7, [{"path": "b.png", "status": "done"}])  # not swallowed by the torn line
    assert set(store.records(7)) == {"a.png", "b.png"}
    store.mark_done(7, "h", "d", 2)
    assert store.is_done(7, "h", "d") and not store.is_done(7, "other", "d") and not store.is_done(7, "h", "x")
    (tmp_path / "shards" / "7.done").write_text('{"settings": "h", "dig')  # torn by a kill: not done
    assert not store.is_done(7, "h", "d") and not list(tmp_path.rglob("*.part"))


def test_done_rerun_skips_shards_unopened_and_verify_rehashes(tmp_path, capsys, monkeypatch):
    src, dst = simple_set(tmp_path / "src", 20), tmp_path / "dst"
    assert immunize(capsys, src, dst)[0] == 0
    first = outputs(dst)
    markers = list((dst / inputs.STATE_DIR / "shards").glob("*.done"))
    assert len(markers) == len({shards.shard_of(f"img{i}.png") for i in range(20)})
    opened = []
    real = reading.load
    monkeypatch.setattr(reading, "load", lambda ctx, item: opened.append(item.rel) or real(ctx, item))
    assert immunize(capsys, src, dst)[0] == 0
    assert opened == [] and report(dst)["run"]["already_done"] == 20 and report(dst)["totals"]["done"] == 20
    # another process count finds the same shards done: 2 processes would each skip all of theirs
    store, seen = shards.Store(dst / inputs.STATE_DIR), 0
    for p in range(2):
        found = shards.spill(inputs.stream(src, dst), tmp_path / f"w{p}", p, 2, dst)
        skipped = []
        assert list(Resume(store, tmp_path / f"w{p}", found, dst, run_hash(dst)).items(skipped.append)) == []
        seen += sum(skipped)
    assert seen == 20
    assert immunize(capsys, src, dst, "--verify")[0] == 0
    assert sorted(opened) == sorted(first) and report(dst)["run"]["protected"] == 0
    # touched (same bytes, new time): its shard is checked, the image re-hashed, not redone
    os.utime(src / "img3.png", ns=(1, 1))
    opened.clear()
    assert immunize(capsys, src, dst)[0] == 0
    assert "img3.png" in opened and report(dst)["run"]["protected"] == 0 and outputs(dst) == first


def run_hash(dst) -> str:
    return report(dst)["settings"]["settings_hash"]


def _alive_pid():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_process_with_the_same_identity_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    src, dst = simple_set(tmp_path / "src", 2), tmp_path / "dst"
    (dst / inputs.STATE_DIR).mkdir(parents=True)
    lock = dst / inputs.STATE_DIR / "lock-p0"
    holder = _alive_pid()
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        rc, err = immunize(capsys, src, dst)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and f"another leat-jax (pid {holder.pid})" in lines[0], err
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
        rc, err = immunize(capsys, src, dst)
        assert rc == 2 and "runs on elsewhere" in err
        lock.unlink()  # a live process of another run, under another identity: refused too, nothing kept
        other = dst / inputs.STATE_DIR / "lock-p3"
        other.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "run": "another"}))
        rc, err = immunize(capsys, src, dst)
        assert rc == 2 and f"lock-p3: another leat-jax run (pid {holder.pid}" in err and not lock.exists()
    finally:
        holder.kill()
        holder.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))  # its holder is dead
    assert immunize(capsys, src, dst)[0] == 0 and len(outputs(dst)) == 2 and not lock.exists()
    assert not other.exists()  # its holder dead, process 0 cleared what that run's process 3 left


def _env() -> dict:
    return {**os.environ, **ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def _tiny_set(folder, n):
    for i in range(n):
        sub = folder / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(8, 8)).save(sub / f"i{i}.png")
    return folder


def test_killed_at_random_moments_resumes_to_identical_files_nothing_done_twice(tmp_path, capsys):
    n = 160
    src, dst = _tiny_set(tmp_path / "src", n), tmp_path / "dst"
    attack = [*ATTACK, "--batch-size", "8", "--no-compile-cache", "--contact-sheet", "0"]
    cmd = [sys.executable, "-m", "leat_jax", "immunize", str(src), str(dst), *attack, "--quiet"]
    rng = random.Random(3)
    manifest = dst / inputs.STATE_DIR / "manifest-0.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, target = time.monotonic() + 120, rng.randint(10, 100)
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count('"done"') >= target:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    killed_at = manifest.read_text().count('"done"')
    assert 10 <= killed_at < n
    assert immunize(capsys, src, dst, attack=attack)[0] == 0
    assert immunize(capsys, src, tmp_path / "whole", attack=attack)[0] == 0
    assert outputs(dst) == outputs(tmp_path / "whole") and len(outputs(dst)) == n
    done = [json.loads(line)["path"] for path in (dst / inputs.STATE_DIR / "shards").glob("*.jsonl")
            for line in path.read_text().splitlines() if '"done"' in line]
    assert len(done) == len(set(done)) == n  # nothing protected twice
    assert report(dst)["run"]["already_done"] >= killed_at
    assert not [p for p in dst.rglob("*.part")]
    assert report(dst)["totals"] == {"images": n, "done": n, "failed": 0, "missing": 0, "done_with_other_settings": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _done_lines(path) -> int:
    return path.read_text().count('"done"') if path.exists() else 0


def test_two_processes_killed_then_one_resumes_to_identical_files_nothing_done_twice(tmp_path, capsys):
    n = 120
    src, dst = _tiny_set(tmp_path / "src", n), tmp_path / "dst"
    attack = [*ATTACK, "--batch-size", "8", "--no-compile-cache", "--contact-sheet", "0"]
    coordinator, state = f"127.0.0.1:{_free_port()}", dst / inputs.STATE_DIR
    cmd = [sys.executable, "-m", "leat_jax", "immunize", str(src), str(dst), *attack, "--quiet", "--distributed",
           "--coordinator", coordinator, "--num-processes", "2", "--process-id"]
    procs = [subprocess.Popen([*cmd, str(i)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2)]
    target = random.Random(5).randint(8, 30)  # of each process's ~60
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if all(_done_lines(state / f"manifest-{i}.jsonl") >= target for i in range(2)):
            break
        time.sleep(0.002)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read()[-2000:]
    killed_at = [_done_lines(state / f"manifest-{i}.jsonl") for i in range(2)]
    assert all(k >= target for k in killed_at) and sum(killed_at) < n, killed_at
    # The same identity as a live process is refused, and leaves that process's temporary files alone.
    holder = _alive_pid()
    try:
        (state / "lock-p0").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        (state / "tmp" / "p0-in-flight.part").write_bytes(b"x")
        rc, err = immunize(capsys, src, dst, attack=attack)
        assert rc == 2 and f"another leat-jax (pid {holder.pid})" in err
        assert (state / "tmp" / "p0-in-flight.part").exists()
    finally:
        holder.kill()
        holder.wait()
    (state / "tmp" / "p1-in-flight.part").write_bytes(b"x")  # as process 1 could leave it, killed mid-write
    (dst / f".{inputs.REPORT}.99999.part").write_bytes(b"{")  # as process 0 could leave it, killed mid-report

    assert immunize(capsys, src, dst, attack=attack)[0] == 0  # one process now: every shard is its own
    assert immunize(capsys, src, tmp_path / "whole", attack=attack)[0] == 0
    assert outputs(dst) == outputs(tmp_path / "whole") and len(outputs(dst)) == n
    done = [json.loads(line)["path"] for path in (state / "shards").glob("*.jsonl")
            for line in path.read_text().splitlines() if '"done"' in line]
    assert len(done) == len(set(done)) == n  # nothing protected twice
    assert report(dst)["run"]["already_done"] >= sum(killed_at)
    assert report(dst)["totals"] == {"images": n, "done": n, "failed": 0, "missing": 0, "done_with_other_settings": 0}
    assert not list(dst.rglob("*.part"))  # no temporary file left, process 1's included
    assert sorted(p.name for p in state.iterdir() if p.name.startswith(("lock-", "work-"))) == ["work-p0"]

"""Sharded sources and sinks (``pipeline.sources``, ``pipeline.sinks``): tar and Parquet shards, local and on S3."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from leat_jax.errors import SetupError
from leat_jax.pipeline import inputs, sinks, sources

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def tar_bytes(files):
    return sinks.encode_shard("tar", files)


def parquet_bytes(table):
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def test_tar_and_parquet_shards_list_and_read_back(tmp_path):
    files = [("a/x.png", b"one"), ("y.jpg", b"two")]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "s0.tar").write_bytes(tar_bytes(files + [("notes.txt", b"skip")]))
    (tmp_path / "s1.parquet").write_bytes(sinks.encode_shard("parquet", files))
    (tmp_path / "other.png").write_bytes(b"x")
    found = sources.list_shards(str(tmp_path))
    assert [(s.rel, s.kind) for s in found] == [("d/s0.tar", "tar"), ("s1.parquet", "parquet")]
    assert [m[:2] for m in sources.members(found[0], sources.read_bytes(found[0].url))] == files  # not notes.txt
    assert sources.members(found[1], sources.read_bytes(found[1].url)) == [(k, b, None) for k, b in files]
    assert sources.list_shards(found[0].url)[0].url == found[0].url  # one shard as SRC
    assert sinks.encode_shard("tar", files) == tar_bytes(files)  # the same bytes on every run


def test_bad_shards_are_one_line_errors(tmp_path):
    with pytest.raises(sources.SourceError, match="no such file"):
        sources.list_shards(str(tmp_path / "nothing"))
    bad = sources.Shard(str(tmp_path / "b.tar"), "b.tar", "tar", "")
    with pytest.raises(sources.SourceError, match="not a readable tar shard") as e:
        sources.members(bad, b"\x00garbage" * 100)
    assert "\n" not in str(e.value)
    nokey = sources.Shard(str(tmp_path / "n.parquet"), "n.parquet", "parquet", "")
    with pytest.raises(sources.SourceError, match="no 'key' column"):
        sources.members(nokey, parquet_bytes(pa.table({"image": [b"x"]})))
    with pytest.raises(sources.SourceError, match="cannot read"):
        sources.read_bytes(str(tmp_path / "gone.tar"))
    # a member whose data is cut off: the tar fails as a whole, not silently short
    data = tar_bytes([("a.png", b"x" * 5000)])[:1500]
    with pytest.raises(sources.SourceError):
        sources.members(bad, data)


def test_commit_writes_the_marker_last_and_only_a_whole_shard_counts(tmp_path):
    url = str(tmp_path / "out" / "s0.tar")
    assert sinks.committed(url, "h", "v1") is None
    sinks.put(url, b"half")  # killed before the marker: not committed
    assert sinks.committed(url, "h", "v1") is None
    sinks.commit(url, b"whole", {"settings": "h", "version": "v1", "records": [{"path": "a"}]})
    assert (tmp_path / "out" / "s0.tar").read_bytes() == b"whole"
    assert sinks.committed(url, "h", "v1")["records"] == [{"path": "a"}]
    assert sinks.committed(url, "other", "v1") is None and sinks.committed(url, "h", "v2") is None
    assert not list((tmp_path / "out").glob("*.part"))
    (tmp_path / "out" / "s0.tar").unlink()  # marker without its shard: redo
    assert sinks.committed(url, "h", "v1") is None


def one_request_at_a_time(app):
    """The WSGI ``app``, answering one request at a time.

    moto (5.2.5) checks a put's ``If-None-Match: *`` and then stores the
    object, two steps with no lock between them (``put_object`` in
    moto/s3/responses.py), so two conditional puts at once could both pass
    its check; S3 makes each conditional put atomic. Served one at a time,
    moto's puts are atomic too, and a race between clients is decided as S3
    decides it (their requests still travel and queue at once).
    """
    gate = threading.Lock()

    def serve(environ, start_response):
        with gate:
            return list(app(environ, start_response))

    return serve


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 (moto, one request at a time), with a bucket; the environment s3fs reads."""
    moto_app = pytest.importorskip("moto.moto_server.werkzeug_app")
    pytest.importorskip("s3fs")
    from werkzeug.serving import make_server  # moto's own server

    app = one_request_at_a_time(moto_app.DomainDispatcherApplication(moto_app.create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=moto_app.MotoRequestHandler)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        if not fs.exists("bucket"):  # moto's servers in one process share their buckets
            fs.mkdir("bucket")
        yield env
    server.shutdown()
    serving.join()


def test_s3_source_and_sink_through_the_loopback_server(s3):
    files = [("x.png", b"one"), ("y.png", b"two")]
    sinks.put("s3://bucket/in/p/s0.tar", tar_bytes(files))
    found = sources.list_shards("s3://bucket/in")
    assert [(s.rel, s.kind) for s in found] == [("p/s0.tar", "tar")] and found[0].url == "s3://bucket/in/p/s0.tar"
    assert [m[:2] for m in sources.members(found[0], sources.read_bytes(found[0].url))] == files
    out = "s3://bucket/out/p/s0.tar"
    sinks.commit(out, b"data", {"settings": "h", "version": found[0].version, "records": []})
    assert sinks.committed(out, "h", found[0].version) is not None
    assert sources.read_bytes(out) == b"data"
    assert json.loads(sources.read_bytes(out + sinks.MARKER))["settings"] == "h"
    with pytest.raises(sources.SourceError, match="no such file"):
        sources.list_shards("s3://bucket/missing")


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_output_lock_on_s3_is_a_conditional_put_one_run_at_a_time(s3):
    first, second = sinks.output_lock("s3://bucket/locked/out/"), sinks.output_lock("s3://bucket/locked/out")
    url = "s3://bucket/locked/out/.leat-jax/lock-p0"
    assert first.url == second.url == url
    with first:
        holder = json.loads(sources.read_bytes(url))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(SetupError) as e:  # a plain put would have replaced the holder: If-None-Match refused it
            second.acquire()
        assert str(e.value) == f"{url}: another leat-jax run (pid {os.getpid()}) is writing into this output"
        assert json.loads(sources.read_bytes(url)) == holder and not second.held
    with pytest.raises(sources.SourceError):
        sources.read_bytes(url)  # released: the object is gone
    sinks.put(url, json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "token": "x"}).encode())
    with second:  # its holder is gone: taken over
        assert json.loads(sources.read_bytes(url))["token"] == second.me["token"]
    sinks.put(url, json.dumps({"host": "elsewhere", "pid": 7, "token": "x"}).encode())
    with pytest.raises(SetupError, match=r"^s3://\S+/lock-p0: another leat-jax run \(pid 7 on elsewhere\) .* object$"):
        first.acquire()


def test_of_runs_racing_for_the_lock_on_s3_exactly_one_wins(s3):
    contenders = 8
    start, outcome = threading.Barrier(contenders), [None] * contenders

    def contend(i):
        lock = sinks.output_lock("s3://bucket/race/out")  # made in its thread: its own S3 client (fsspec's cache)
        start.wait()  # every conditional put at once
        try:
            lock.acquire()
            outcome[i] = (lock, None)
        except SetupError as e:
            outcome[i] = (lock, str(e))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [lock for lock, error in outcome if error is None]
    assert len(winners) == 1 and winners[0].held  # a check-then-write lock lets all 8 win here
    url = winners[0].url
    refusal = f"{url}: another leat-jax run (pid {os.getpid()}) is writing into this output"
    assert [error for _, error in outcome if error is not None] == [refusal] * (contenders - 1)
    assert json.loads(sources.read_bytes(url))["token"] == winners[0].me["token"]  # no loser overwrote it
    winners[0].release()
    loser = next(lock for lock, error in outcome if error is not None)
    with loser:  # released: the next run takes it
        assert loser.held and json.loads(sources.read_bytes(url))["token"] == loser.me["token"]
    assert not loser.held


def test_output_lock_on_a_local_disk_is_the_folder_jobs_lock(tmp_path):
    lock = sinks.output_lock(f"file://{tmp_path}/out")
    assert lock.path == tmp_path / "out" / inputs.STATE_DIR / "lock-p0"
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "run": "another"}))
    with pytest.raises(SetupError, match="another leat-jax .* is writing into this output folder"):
        lock.acquire()
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "run": "another"}))
    with lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()

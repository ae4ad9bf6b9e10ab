"""One process per identity in an output folder: a lock file naming its holder.

``DST/.leat-jax/lock-p<index>`` holds the host and pid of the process that
runs as process ``index`` there, and the run it belongs to. A second such
process is refused with a one-line error, and so is a process of another
run while any live process holds a lock there (the processes of one
``jax.distributed`` job share a run); a lock whose holder is gone (same host, pid no longer
running) is stale and taken over. A lock from another host cannot be checked
and is refused, naming the host and the file to remove. ``departed`` finds
the processes of an earlier run with more processes, whose leftovers
(lock, temporary files, listing) nobody live will clear. ``ObjectLock`` is
the same lock as one object on an object store, for sharded jobs.
"""
from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path

from leat_jax.errors import SetupError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def holder_of(path: Path) -> dict | None:
    """The holder recorded in lock file ``path``, or None (absent, or torn by a kill)."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def is_live(holder: dict | None) -> bool:
    """Whether ``holder`` runs: its pid is alive on this host, or it is on another host (cannot be checked)."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    return _alive(int(holder.get("pid", -1)))


def in_use(state: Path, index: int) -> bool:
    """Whether process ``index``'s lock in ``state`` is held by a live process (or one on another host)."""
    return is_live(holder_of(Path(state) / f"lock-p{index}"))


def departed(state: Path, process_count: int) -> list[int]:
    """Process indexes >= ``process_count`` that left state in ``state`` and whose lock no live process holds."""
    found = set()
    for path in [*Path(state).glob("lock-p*"), *Path(state).glob("work-p*"), *Path(state).glob("tmp/p*-*.part")]:
        m = re.match(r"(?:lock-|work-)?p(\d+)", path.name)
        if m and int(m.group(1)) >= process_count:
            found.add(int(m.group(1)))
    return sorted(i for i in found if not in_use(state, i))


class Held:
    """What both locks share: ``release`` undoes a successful ``acquire`` once; ``with`` takes and releases."""

    held = False

    def acquire(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the lock's file or object, gone already or not."""
        raise NotImplementedError

    def release(self) -> None:
        if self.held:
            self.remove()
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class Lock(Held):
    """The lock of process ``index`` in the state folder ``state`` (a context manager)."""

    def __init__(self, state: Path, index: int, run: str | None = None):
        self.path = Path(state) / f"lock-p{index}"
        self.index = index
        self.run = run if run is not None else f"{socket.gethostname()} pid {os.getpid()}"
        self.held = False

    def acquire(self) -> None:
        """Take the lock; ``SetupError`` (one line) if a live process holds it, or one of another run holds any."""
        self._take()
        for other in sorted(self.path.parent.glob("lock-p*")):
            holder = holder_of(other) if other != self.path else None
            if holder and holder.get("run") != self.run and is_live(holder) and holder.get("pid") != os.getpid():
                self.release()
                hint = "" if holder.get("host") == socket.gethostname() else "; if it is dead, remove this file"
                raise SetupError(f"{other}: another leat-jax run (pid {holder.get('pid')} on {holder.get('host')}) "
                                 f"is writing into this output folder{hint}")

    def _take(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "run": self.run}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise SetupError(f"{self.path}: could not take the lock")

    def _take_over_if_stale(self, host: str) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            holder = {}  # torn by a kill between create and write: nobody holds it
        if holder and holder.get("host") != host:
            raise SetupError(f"{self.path}: process {self.index} of this output folder runs on {holder.get('host')} "
                             f"(pid {holder.get('pid')}); if it is dead, remove this file")
        if holder and _alive(int(holder.get("pid", -1))) and holder.get("pid") != os.getpid():
            raise SetupError(f"{self.path}: another leat-jax (pid {holder['pid']}) is writing into this output "
                             f"folder as process {self.index}")
        self.path.unlink(missing_ok=True)  # stale: its holder is gone

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class ObjectLock(Held):
    """The lock of an output on an object store (fsspec): one object, created only where it is absent.

    On S3 (s3fs) the create is a conditional put (``If-None-Match: *``; an
    S3-compatible server must honour it), so of two runs starting at once
    exactly one takes it; on other fsspec filesystems it is
    fsspec's check-then-write, which narrows the window without closing it.
    A lock whose holder is gone (this host, pid not running) is removed and
    taken over; one from another host cannot be checked and is refused. A
    context manager.

    Args:
      fs: the fsspec filesystem.
      path: the lock object's path in ``fs``.
      url: the lock object's URL, for messages.
    """

    def __init__(self, fs, path: str, url: str):
        self.fs, self.path, self.url = fs, path, url
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.held = False

    def acquire(self) -> None:
        """Take the lock; ``SetupError`` (one line) if another live run holds it."""
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, json.dumps(self.me).encode(), mode="create")
            except FileExistsError:
                self._clear_if_stale()
                continue
            self.held = True
            return
        raise SetupError(f"{self.url}: could not take the lock")

    def _clear_if_stale(self) -> None:
        try:
            holder = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            holder = {}  # not a lock of ours: nobody holds it
        holder = holder if isinstance(holder, dict) else {}
        if holder and holder.get("host") != self.me["host"]:
            raise SetupError(f"{self.url}: another leat-jax run (pid {holder.get('pid')} on {holder.get('host')}) is "
                             "writing into this output; if it is dead, remove this object")
        if holder and _alive(int(holder.get("pid", -1))):
            raise SetupError(f"{self.url}: another leat-jax run (pid {holder.get('pid')}) is writing into this output")
        self.fs.rm_file(self.path)  # stale: its holder is gone

    def remove(self) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

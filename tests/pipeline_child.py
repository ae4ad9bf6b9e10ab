"""A child process for the pipeline tests: ``leat-jax`` without root's file powers.

Usage: python -m tests.pipeline_child ARGS...   (as ``leat-jax ARGS...``)

Root ignores file permissions, so a test of an unreadable input or an
unwritable DST would prove nothing when the suite runs as root (as in many
containers). This child first drops the two capabilities that let root
bypass permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), then runs the
command; for any other user it runs it as is.
"""
from __future__ import annotations

import ctypes
import os
import sys

_CAP_VERSION_3 = 0x20080522
_DAC_CAPS = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_file_powers() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    mask = 0xFFFFFFFF
    for cap in _DAC_CAPS:
        mask &= ~(1 << cap)
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & mask)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


if __name__ == "__main__":
    drop_file_powers()
    from leat_jax.cli import main

    raise SystemExit(main(sys.argv[1:]))

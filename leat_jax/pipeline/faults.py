"""Faults of the job itself, as opposed to faults of one image.

A bad image fails alone and the job goes on. Some faults are the job's: the
disk is full, the output folder was removed, a device ran out of memory. The
first two show up as the same write error on image after image; ``Streak``
turns K of them in a row into ``JobFailed`` (exit 3) instead of marking every
remaining image failed. Out-of-memory is recognised by ``is_out_of_memory``
so that the attack stage can retry with a smaller batch.
"""
from __future__ import annotations

import jax

# Failures in a row with the same job-level reason that stop the job.
SAME_FAULT_LIMIT = 5
# The fault of an image that ran out of device memory in its smallest unit (a photo's face region).
OUT_OF_MEMORY = "device out of memory"
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


class JobFailed(RuntimeError):
    """The job itself cannot go on (one line); finished images are kept."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory (XLA's RESOURCE_EXHAUSTED)."""
    if not isinstance(error, (jax.errors.JaxRuntimeError, MemoryError)):
        return False
    text = str(error)
    return isinstance(error, MemoryError) or any(m in text for m in _OOM_MARKERS)


class Streak:
    """Counts failures in a row with the same job-level reason (``fault`` of a record)."""

    def __init__(self, limit: int = SAME_FAULT_LIMIT):
        self.limit = limit
        self.reason: str | None = None
        self.count = 0

    def add(self, record: dict) -> str | None:
        """Note one record; returns the reason once ``limit`` failures in a row share it, else None."""
        fault = record.get("fault") if record.get("status") == "failed" else None
        if record.get("status") == "done" or fault is None or fault != self.reason:
            self.reason, self.count = fault, 0
        if fault is not None:
            self.count += 1
        return self.reason if self.reason is not None and self.count >= self.limit else None

"""The read and decode stage: one input path in, a decoded image (or why not) out.

An input the manifest has as done with the same settings and output is
skipped: without opening it when its size and modification time, and its
output's, are those recorded; else (or with ``--verify``) when the hashes
of its content and of its output are those recorded.
"""
from __future__ import annotations

import os

from leat_jax.pipeline import images, inputs
from leat_jax.pipeline.job import Context, Failure, Prepared, Skipped, sha256


def load(ctx: Context, item: inputs.Item) -> bytes | Failure:
    """The file's bytes, or a ``Failure`` naming it and the problem."""
    if item.problem:
        return Failure(item, f"{item.path}: {item.problem}")
    try:
        size = item.path.stat().st_size
        if size > ctx.max_bytes:
            return Failure(item, f"{item.path}: file of {size} bytes is larger than any accepted image")
        return item.path.read_bytes()
    except IsADirectoryError:
        return Failure(item, f"{item.path}: a directory, not an image")
    except FileNotFoundError:
        return Failure(item, f"{item.path}: no such file (removed, or a broken link)")
    except OSError as e:
        return Failure(item, f"{item.path}: cannot read ({e.strerror or e})")


def _same_stat(item: inputs.Item, prev: dict, dst) -> bool:
    if item.size is None or prev.get("input_size") != item.size or prev.get("input_mtime_ns") != item.mtime_ns:
        return False
    try:
        st = os.stat(dst / item.output)
    except OSError:
        return False
    return prev.get("output_size") == st.st_size and prev.get("output_mtime_ns") == st.st_mtime_ns


def previous_done(ctx: Context, item: inputs.Item) -> dict | None:
    """The previous ``done`` record of ``item`` with this run's settings and output, if any."""
    prev = ctx.previous.get(item.rel)
    if (
        prev
        and prev.get("status") == "done"
        and prev.get("settings") == ctx.settings_hash
        and prev.get("output") == item.output
    ):
        return prev
    return None


def is_done(ctx: Context, item: inputs.Item, input_sha256: str) -> bool:
    """Whether the manifest has ``item`` done with this content and settings, its output intact (hashed)."""
    prev = previous_done(ctx, item)
    if prev is None or prev.get("input_sha256") != input_sha256:
        return False
    try:
        return sha256((ctx.dst / item.output).read_bytes()) == prev.get("output_sha256")
    except OSError:
        return False  # output gone or unreadable: do it again


def read(ctx: Context, item: inputs.Item) -> Prepared | Failure | Skipped:
    """Read, hash and decode one input.

    Args:
      ctx: the job's context.
      item: the input (from ``inputs``).
    Returns:
      ``Prepared`` (decoded, with the attack's float input), ``Skipped``
      (done before) or ``Failure`` (one line naming the file).
    """
    prev = None if ctx.verify else previous_done(ctx, item)
    if prev is not None and _same_stat(item, prev, ctx.dst):
        return Skipped(item)  # same size and time, input and output: not even opened
    data = load(ctx, item)
    if isinstance(data, Failure):
        return data
    sha = sha256(data)
    if is_done(ctx, item, sha):
        return Skipped(item)
    return decoded(ctx, item, data, sha)


def decoded(ctx: Context, item: inputs.Item, data: bytes, sha: str) -> Prepared | Failure:
    """Decode one input's bytes (``sha``: their SHA-256) for the attack, or say why not (one line)."""
    try:
        image = images.decode(data, ctx.max_size)
    except images.ImageError as e:
        return Failure(item, f"{item.path}: {e}")
    if ctx.format == "jpeg" and (image.bits == 16 or image.alpha is not None):
        what = "16-bit samples" if image.bits == 16 else "an alpha channel"
        return Failure(item, f"{item.path}: JPEG output cannot hold {what}; use --format png")
    return Prepared(item, sha, image, image.model_input())

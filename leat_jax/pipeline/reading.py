"""The read and decode stage: one input path in, a decoded image (or why not) out.

An input the manifest has as done, with the same content, settings and
output, whose output is still intact, is skipped without decoding.
"""
from __future__ import annotations

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


def is_done(ctx: Context, item: inputs.Item, input_sha256: str) -> bool:
    """Whether the manifest has ``item`` done with this content and settings, its output intact."""
    prev = ctx.previous.get(item.rel)
    if not (
        prev
        and prev.get("status") == "done"
        and prev.get("input_sha256") == input_sha256
        and prev.get("settings") == ctx.settings_hash
        and prev.get("output") == item.output
    ):
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
    data = load(ctx, item)
    if isinstance(data, Failure):
        return data
    sha = sha256(data)
    if is_done(ctx, item, sha):
        return Skipped(item)
    try:
        image = images.decode(data, ctx.max_size)
    except images.ImageError as e:
        return Failure(item, f"{item.path}: {e}")
    if ctx.format == "jpeg" and (image.bits == 16 or image.alpha is not None):
        what = "16-bit samples" if image.bits == 16 else "an alpha channel"
        return Failure(item, f"{item.path}: JPEG output cannot hold {what}; use --format png")
    return Prepared(item, sha, image, image.model_input())

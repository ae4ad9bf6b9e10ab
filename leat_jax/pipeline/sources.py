"""Sharded sources: webdataset tar shards and Parquet files, on a local disk or behind an fsspec URL.

SRC is a folder or URL prefix (``s3://bucket/prefix``, ``file:///data``)
holding ``*.tar`` or ``*.parquet`` shards, or one shard. A tar shard's images
are its ``{key}.{jpg,png,...}`` members; a Parquet shard has a key column and
an image-bytes column. An image's relative path (its manifest key and the
source of its id) is its member name, or its key as stored; so images under
the same names give the same files as the in-process engine on a folder.
S3 credentials and endpoint come from the usual environment
(``AWS_ENDPOINT_URL`` for an S3-compatible server).
"""
from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import tarfile

from leat_jax.pipeline.inputs import is_image_name

# Shard kinds by suffix.
KINDS = {".tar": "tar", ".parquet": "parquet"}
# Parquet columns: the image's key and its encoded bytes.
KEY_COLUMN, IMAGE_COLUMN = "key", "image"
# What installs the optional packages shards need.
STORAGE_EXTRA = "pip install 'leat-jax[storage]'"


class SourceError(ValueError):
    """A source or one shard cannot be read (one line naming it)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One input shard.

    Attributes:
      url: where it is read from (a URL, or a local path).
      rel: its POSIX path relative to SRC (the output shard's place under DST).
      kind: ``tar`` or ``parquet``.
      version: what identifies this content (size and modification time or ETag).
    """

    url: str
    rel: str
    kind: str
    version: str


def filesystem(url: str):
    """(fsspec filesystem, path within it) of ``url`` or a local path; ``SourceError`` without fsspec."""
    try:
        import fsspec  # an optional extra: only sharded sources need it
    except ImportError:
        raise SourceError(f"{url}: tar and Parquet shards and URLs need fsspec ({STORAGE_EXTRA})") from None
    return fsspec.core.url_to_fs(url)


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is the local disk (where renames are atomic)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def kind_of(name: str) -> str | None:
    return KINDS.get(posixpath.splitext(name)[1].lower())


def is_sharded(src: str) -> bool:
    """Whether SRC is a sharded dataset: a URL, a ``.tar``/``.parquet`` file, or a folder holding such files."""
    if "://" in src or kind_of(src):
        return True
    try:
        with os.scandir(src) as entries:
            return any(kind_of(e.name) for e in entries if e.is_file())
    except OSError:  # not a folder, or unreadable: the folder job's listing says so
        return False


def _version(info: dict) -> str:
    when = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{when}"


def list_shards(src: str) -> list[Shard]:
    """Every shard under ``src`` (or ``src`` itself), sorted by relative path.

    Raises:
      SourceError: when ``src`` does not exist or cannot be listed.
    """
    try:
        fs, root = filesystem(src)
        if not fs.exists(root):
            raise SourceError(f"{src}: no such file, folder or object prefix")
        if fs.isfile(root):
            found = {root: fs.info(root)}
            root = posixpath.dirname(root)
        else:
            found = fs.find(root, detail=True)
    except SourceError:
        raise
    except Exception as e:  # fsspec backends raise their own types (no bucket, no credentials...)
        raise SourceError(f"{src}: cannot list ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
    shards = []
    for path, info in sorted(found.items()):
        kind = kind_of(path)
        if kind is not None:
            rel = posixpath.relpath(path, root) if root else path
            shards.append(Shard(fs.unstrip_protocol(path), rel, kind, _version(info)))
    return shards


def read_bytes(url: str) -> bytes:
    """The whole object at ``url``; ``SourceError`` naming it when unreadable."""
    try:
        fs, path = filesystem(url)
        return fs.cat_file(path)
    except Exception as e:
        raise SourceError(f"{url}: cannot read ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None


def members(shard: Shard, data: bytes) -> list[tuple[str, bytes | None, str | None]]:
    """(key, image bytes or None, problem or None) of each image in the shard, in stored order.

    Raises:
      SourceError: the shard as a whole is unreadable (not a tar, not
        Parquet, no key or image column).
    """
    return _tar_members(shard, data) if shard.kind == "tar" else _parquet_members(shard, data)


def _tar_members(shard: Shard, data: bytes):
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if not (m.isfile() and is_image_name(m.name)):
                    continue
                try:
                    out.append((m.name, tar.extractfile(m).read(), None))
                except (tarfile.TarError, OSError) as e:
                    out.append((m.name, None, f"{shard.url}: member {m.name}: cannot read ({e})"))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{shard.url}: not a readable tar shard ({e})") from None
    return out


def _parquet_members(shard: Shard, data: bytes):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{shard.url}: Parquet shards need pyarrow ({STORAGE_EXTRA})") from None

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{shard.url}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for column in (KEY_COLUMN, IMAGE_COLUMN):
        if column not in table.column_names:
            raise SourceError(f"{shard.url}: no {column!r} column (columns: {', '.join(table.column_names)})")
    keys, blobs = table.column(KEY_COLUMN).to_pylist(), table.column(IMAGE_COLUMN).to_pylist()
    return [(str(k), b, None if isinstance(b, bytes) else f"{shard.url}: key {k}: no image bytes")
            for k, b in zip(keys, blobs)]

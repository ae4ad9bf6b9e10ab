"""Which files to protect, where each result goes, and each image's stable id.

SRC is a folder (walked recursively, images recognised by suffix), one image,
or a text file listing paths (one a line; blank lines and ``#`` comments
skipped; relative paths are relative to the list's folder). Every input gets
a relative path: its key in the manifest, the source of its id, and where its
result goes under DST. ``stream`` yields a folder's inputs one directory at
a time (sorted within each directory), never holding the whole tree;
``discover`` is the sorted list, for small jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import posixpath
from pathlib import Path, PurePosixPath

from leat_jax.pipeline.images import IMAGE_SUFFIXES, OUTPUT_FORMATS

# What leat-jax keeps in DST besides the outputs.
STATE_DIR = ".leat-jax"
REPORT = "leat-jax-report.json"
CONTACT_SHEET = "leat-jax-contact-sheet.png"
SETTINGS = "leat-jax-settings.json"
RESERVED = frozenset({REPORT, CONTACT_SHEET, SETTINGS})
NOTHING_IN_FOLDER = (f"no images in this folder or below ({', '.join(IMAGE_SUFFIXES)}); tar and Parquet shards "
                     "are read only at its top level")


class InputError(ValueError):
    """SRC cannot be used at all (one line)."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One input.

    Attributes:
      rel: POSIX path relative to SRC: the manifest key and the id's source.
      path: the file to read.
      output: POSIX path of the result relative to DST.
      problem: a reason known before reading (a directory named like an
        image, an unlistable folder, a name clash), or None.
    """

    rel: str
    path: Path
    output: str
    problem: str | None = None
    size: int | None = None  # bytes, from the listing (None: unknown)
    mtime_ns: int | None = None

    @property
    def image_id(self) -> int:
        return image_id(self.rel)


def image_id(rel: str) -> int:
    """A stable uint32 from the relative path, so an image keeps its random start
    whatever batch, device, process or run it lands in."""
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:4], "little")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _normal_rel(line: str, base: Path) -> tuple[str, Path]:
    p = Path(line)
    path = p if p.is_absolute() else base / p
    rel = os.path.normpath(line)
    if p.is_absolute() or rel == ".." or rel.startswith("../"):
        # outside the list's folder: keep the absolute path's shape under DST
        absolute = Path(os.path.abspath(path))
        try:
            rel = absolute.relative_to(base.absolute()).as_posix()
        except ValueError:
            rel = PurePosixPath(absolute.as_posix()).relative_to("/").as_posix()
    return PurePosixPath(rel.replace(os.sep, "/")).as_posix(), path


def _read_list(listing: Path) -> list[tuple[str, Path, str | None]]:
    try:
        text = listing.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{listing}: neither an image nor a UTF-8 list of paths") from None
    except OSError as e:
        raise InputError(f"{listing}: cannot read ({e.strerror or e})") from None
    found: dict[str, tuple[str, Path, str | None]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel, path = _normal_rel(line, listing.parent)
        problem = "a directory, not an image" if path.is_dir() else None
        found.setdefault(rel, (rel, path, problem))
    return list(found.values())


def _with_suffix(rel: str, suffix: str) -> str:
    root, _ = posixpath.splitext(rel)
    return root + suffix


def _outputs_of(found: list[tuple[str, object, str | None]], fmt: str) -> list[tuple[str, object, str | None, str]]:
    """(rel, path, problem, output) per input, in the order given.

    Outputs take the output format's suffix; where two inputs would then
    share an output (``a.jpg`` and ``a.png``), the renamed one keeps its whole
    name and gets the suffix appended (``a.jpg.png``)."""
    suffix = OUTPUT_FORMATS[fmt]
    outputs = {rel: _with_suffix(rel, suffix) for rel, _, _ in found}
    for _ in range(3):
        claims: dict[str, list[str]] = {}
        for rel, out in outputs.items():
            claims.setdefault(out, []).append(rel)
        clashing = [rels for rels in claims.values() if len(rels) > 1]
        if not clashing:
            break
        for rels in clashing:
            for rel in rels:
                if outputs[rel] != rel:
                    outputs[rel] = rel + suffix
    claims = {}
    for rel, out in outputs.items():
        claims.setdefault(out, []).append(rel)
    result = []
    for rel, path, problem in found:
        out = outputs[rel]
        if problem is None and len(claims[out]) > 1:
            problem = f"its output {out} would clash with that of {min(r for r in claims[out] if r != rel)}"
        if problem is None and (out in RESERVED or out.split("/")[0] == STATE_DIR):
            problem = f"its output name {out} is reserved for leat-jax's own files"
        result.append((rel, path, problem, out))
    return result


def _assign_outputs(found: list[tuple[str, Path, str | None]], fmt: str) -> list[Item]:
    """Items with their outputs (see ``_outputs_of``), sorted by relative path."""
    items = [Item(rel, path, out, problem) for rel, path, problem, out in _outputs_of(found, fmt)]
    return sorted(items, key=lambda i: i.rel)


def _stat(entry: os.DirEntry) -> tuple[int | None, int | None]:
    try:
        st = entry.stat()
    except OSError:
        return None, None  # a broken link: reading reports it
    return st.st_size, st.st_mtime_ns


def _stream_folder(folder: str, prefix: str, skip: Path, fmt: str):
    """Items of ``folder`` (its files, sorted, outputs assigned), then of each sub-folder, depth first.

    Strings, not ``Path`` objects, until an item is made: a tree of millions is mostly this loop.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        rel = prefix.rstrip("/") or "."
        yield Item(rel, Path(folder), rel, f"cannot list this folder ({e.strerror or e})")
        return
    found, stats, subfolders = [], {}, []
    for entry in entries:
        rel = prefix + entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if entry.name == STATE_DIR or Path(entry.path).resolve() == skip:
                continue  # DST inside SRC: never protect our own outputs
            if is_image_name(entry.name):
                found.append((rel, entry.path, "a directory named like an image; not protected"))
            elif not entry.is_symlink():  # symlinked folders could loop
                subfolders.append((entry.path, rel + "/"))
        elif is_image_name(entry.name):
            found.append((rel, entry.path, None))
            stats[rel] = _stat(entry)
    for rel, path, problem, output in _outputs_of(found, fmt):  # outputs keep the folder: clashes are among siblings
        size, mtime_ns = stats.get(rel, (None, None))
        yield Item(rel, Path(path), output, problem, size, mtime_ns)
    for sub, sub_prefix in subfolders:
        yield from _stream_folder(sub, sub_prefix, skip, fmt)


def _checked(src, dst) -> tuple[Path, Path]:
    """(SRC, DST) as paths; ``InputError`` when SRC is missing or is DST itself."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_dir() and src.resolve() == dst.resolve():
        raise InputError(f"{src}: SRC and DST are the same folder; the inputs would be overwritten")
    return src, dst


def stream(src, dst, fmt: str = "png"):
    """Every input under ``src``, streamed: a folder one directory at a time, sorted within it.

    Raises ``InputError`` (before yielding anything) when SRC cannot be used or holds no input at all.
    """
    src, dst = _checked(src, dst)
    if src.is_dir():
        items = _stream_folder(str(src), "", dst.resolve(), fmt)
    else:
        items = (dataclasses.replace(i, size=st[0], mtime_ns=st[1]) for i in discover(src, dst, fmt)
                 for st in [_path_stat(i.path)])
    first = next(items, None)  # a typo'd or empty SRC is an error, not a job that protects nothing and exits 0
    if first is None:
        raise InputError(f"{src}: {NOTHING_IN_FOLDER if src.is_dir() else 'the list names no images'}")
    return itertools.chain([first], items)


def _path_stat(path: Path) -> tuple[int | None, int | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def discover(src, dst, fmt: str = "png") -> list[Item]:
    """Every input under ``src`` (folder, image or list), sorted by relative path."""
    src, dst = _checked(src, dst)
    if src.is_dir():
        return sorted(_stream_folder(str(src), "", dst.resolve(), fmt), key=lambda i: i.rel)
    elif is_image_name(src.name):
        found = [(src.name, src, None)]
    else:
        found = _read_list(src)
    items = [_not_onto_itself(item, dst) for item in _assign_outputs(found, fmt)]
    if is_image_name(src.name) and items[0].problem:
        raise InputError(f"{src}: {items[0].problem}")
    return items


def _not_onto_itself(item: Item, dst: Path) -> Item:
    """``item``, with a problem when its output is the input file itself (DST is the folder of an image SRC,
    or of a list's entries): protecting it would overwrite the original."""
    if item.problem is None and (dst / item.output).resolve() == Path(item.path).resolve():
        return dataclasses.replace(item, problem=f"its output {dst / item.output} is this input itself, which "
                                                 "would be overwritten; give another DST")
    return item

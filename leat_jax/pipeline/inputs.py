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
import os
from pathlib import Path, PurePosixPath

from leat_jax.pipeline.images import IMAGE_SUFFIXES, OUTPUT_FORMATS

# What leat-jax keeps in DST besides the outputs.
STATE_DIR = ".leat-jax"
REPORT = "leat-jax-report.json"
CONTACT_SHEET = "leat-jax-contact-sheet.png"
SETTINGS = "leat-jax-settings.json"
RESERVED = frozenset({REPORT, CONTACT_SHEET, SETTINGS})


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


def _walk(src: Path, skip: Path | None) -> list[tuple[str, Path, str | None]]:
    found: list[tuple[str, Path, str | None]] = []

    def rel_of(p: Path) -> str:
        return p.relative_to(src).as_posix()

    def visit(folder: Path):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            found.append((rel_of(folder) or ".", folder, f"cannot list this folder ({e.strerror or e})"))
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if skip is not None and path.resolve() == skip:
                    continue  # DST inside SRC: never protect our own outputs
                if entry.name == STATE_DIR:
                    continue
                if is_image_name(entry.name):
                    found.append((rel_of(path), path, "a directory named like an image; not protected"))
                    continue
                if not entry.is_symlink():  # symlinked folders could loop
                    visit(path)
            elif is_image_name(entry.name):
                found.append((rel_of(path), path, None))  # broken links too: reading reports them

    visit(src)
    return found


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


def _assign_outputs(found: list[tuple[str, Path, str | None]], fmt: str) -> list[Item]:
    """Outputs take the output format's suffix; where two inputs would then
    share an output (``a.jpg`` and ``a.png``), the renamed one keeps its whole
    name and gets the suffix appended (``a.jpg.png``)."""
    suffix = OUTPUT_FORMATS[fmt]
    outputs = {rel: str(PurePosixPath(rel).with_suffix(suffix)) for rel, _, _ in found}
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
    items = []
    for rel, path, problem in found:
        out = outputs[rel]
        if problem is None and len(claims[out]) > 1:
            problem = f"its output {out} would clash with that of {min(r for r in claims[out] if r != rel)}"
        if problem is None and (out in RESERVED or out.split("/")[0] == STATE_DIR):
            problem = f"its output name {out} is reserved for leat-jax's own files"
        items.append(Item(rel=rel, path=path, output=out, problem=problem))
    return sorted(items, key=lambda i: i.rel)


def _stat(entry: os.DirEntry) -> tuple[int | None, int | None]:
    try:
        st = entry.stat()
    except OSError:
        return None, None  # a broken link: reading reports it
    return st.st_size, st.st_mtime_ns


def _stream_folder(src: Path, folder: Path, skip: Path, fmt: str):
    """Items of ``folder`` (its files, sorted, outputs assigned), then of each sub-folder, depth first."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        rel = folder.relative_to(src).as_posix() or "."
        yield Item(rel, folder, rel, f"cannot list this folder ({e.strerror or e})")
        return
    found, stats, subfolders = [], {}, []
    for entry in entries:
        path = Path(entry.path)
        rel = path.relative_to(src).as_posix()
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if path.resolve() == skip or entry.name == STATE_DIR:
                continue  # DST inside SRC: never protect our own outputs
            if is_image_name(entry.name):
                found.append((rel, path, "a directory named like an image; not protected"))
            elif not entry.is_symlink():  # symlinked folders could loop
                subfolders.append(path)
        elif is_image_name(entry.name):
            found.append((rel, path, None))
            stats[rel] = _stat(entry)
    for item in _assign_outputs(found, fmt):  # outputs keep the folder: clashes are among siblings only
        yield dataclasses.replace(item, size=stats.get(item.rel, (None, None))[0],
                                  mtime_ns=stats.get(item.rel, (None, None))[1])
    for sub in subfolders:
        yield from _stream_folder(src, sub, skip, fmt)


def stream(src, dst, fmt: str = "png"):
    """Every input under ``src``, streamed: a folder one directory at a time, sorted within it.

    Raises ``InputError`` (before yielding anything) when SRC cannot be used.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_dir():
        if src.resolve() == dst.resolve():
            raise InputError(f"{src}: SRC and DST are the same folder; the inputs would be overwritten")
        return _stream_folder(src, src, dst.resolve(), fmt)
    return (dataclasses.replace(i, size=st[0], mtime_ns=st[1]) for i in discover(src, dst, fmt)
            for st in [_path_stat(i.path)])


def _path_stat(path: Path) -> tuple[int | None, int | None]:
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def discover(src, dst, fmt: str = "png") -> list[Item]:
    """Every input under ``src`` (folder, image or list), sorted by relative path."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_dir():
        if src.resolve() == dst.resolve():
            raise InputError(f"{src}: SRC and DST are the same folder; the inputs would be overwritten")
        found = _walk(src, dst.resolve())
    elif is_image_name(src.name):
        found = [(src.name, src, None)]
    else:
        found = _read_list(src)
    return _assign_outputs(found, fmt)

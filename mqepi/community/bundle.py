"""Reading an untrusted bundle safely (the "Container" checks of docs/community.md).

A bundle is a folder or a ``.zip``. :func:`open_bundle` lists its entries and checks every
one before any is read: zip entry names (absolute, ``..``, backslashes, duplicates, nesting),
symlinks (never followed: files are opened with ``O_NOFOLLOW``), special files, encrypted
entries and zip bombs. Entries are then read with a bound (:func:`read_entry`), and a zip
entry that inflates to more than its header says is corrupt. :func:`bundle_digest` names a
bundle by its content.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from mqepi.community.problems import BundleReport, Limits
from mqepi.lake.durable import sha256_stream

#: A zip entry that inflates more than this ratio (and to more than 1 MiB) is a zip bomb.
MAX_ZIP_RATIO = 200
#: A zip entry larger than this may be checked against MAX_ZIP_RATIO.
ZIP_BOMB_MIN_BYTES = 1 << 20
#: What a corrupt zip file or entry raises in :mod:`zipfile` and :mod:`zlib`.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError, struct.error)


class EntryError(Exception):
    """A zip entry could not be read as its header describes it."""


class Source:
    """The entries of a bundle (name -> size) and a bounded reader; folder or zip."""

    def __init__(self, kind: str, entries: dict[str, int], reader: Callable[[str, int], bytes],
                 close: Callable[[], None] = lambda: None):
        self.kind, self.entries, self._reader, self.close = kind, entries, reader, close

    def read(self, name: str, limit: int) -> bytes:
        """At most ``limit + 1`` bytes of entry ``name`` (one more than allowed shows it is too big)."""
        return self._reader(name, limit)


def open_bundle(path: Path, limits: Limits, report: BundleReport) -> Source | None:
    """The bundle at ``path`` as a :class:`Source`, or None (with the problems in ``report``)."""
    if path.is_symlink():
        report.add("bundle", path.name, "the bundle path is a symlink; symlinks are never followed")
        return None
    if path.is_dir():
        return _folder_source(path, limits, report)
    if path.is_file():
        return _zip_source(path, limits, report)
    report.add("bundle", path.name, "not a folder or a .zip file" if path.exists() else "no such bundle")
    return None


def read_entry(source: Source, name: str, limit: int, report: BundleReport) -> bytes | None:
    """Entry ``name`` if it can be read and is at most ``limit`` bytes; else None, with the problem in ``report``."""
    try:
        data = source.read(name, limit)
    except EntryError as exc:
        report.add("zip", name, str(exc))
        return None
    except OSError as exc:
        report.add("bundle", name, f"cannot read: {exc}")
        return None
    if len(data) > limit:
        report.add("limit", name, f"more than {limit} bytes")
        return None
    return data


# ------------------------------------------------------------------ a folder


def _folder_source(root: Path, limits: Limits, report: BundleReport) -> Source | None:
    entries: dict[str, int] = {}
    with os.scandir(root) as it:
        listing = sorted(it, key=lambda e: e.name)
    if len(listing) > limits.max_entries:
        report.add("limit", None, f"the bundle folder has {len(listing)} entries, more than the limit {limits.max_entries}")
        return None
    for entry in listing:
        if entry.is_symlink():
            report.add("bundle", entry.name, "is a symlink; symlinks are never followed")
        elif entry.is_dir(follow_symlinks=False):
            report.add("bundle", entry.name + "/", "nested folder; a bundle folder holds only manifest.json and Parquet files")
        elif not entry.is_file(follow_symlinks=False):
            report.add("bundle", entry.name, "not a regular file")
        else:
            entries[entry.name] = entry.stat(follow_symlinks=False).st_size

    def reader(name: str, limit: int) -> bytes:
        # O_NOFOLLOW: a file swapped for a symlink after the listing is refused, not followed
        with open_regular(root / name) as f:
            return f.read(limit + 1)

    return Source("folder", entries, reader)


def open_regular(path: Path):
    """Open a regular file for reading; refuse a symlink (O_NOFOLLOW) and never block on a FIFO."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


# ------------------------------------------------------------------ a zip


def _zip_source(path: Path, limits: Limits, report: BundleReport) -> Source | None:
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.LargeZipFile, *ZIP_ERRORS) as exc:
        report.add("zip", name, f"not a zip file: {exc}")
        return None
    if len(infos) > limits.max_entries:
        report.add("limit", name, f"the zip has {len(infos)} entries, more than the limit {limits.max_entries}")
        return None
    problems_before = len(report.problems)
    files, declared = _zip_files(infos, report)
    if declared > limits.max_total_bytes:
        report.add("limit", name, f"total uncompressed size {declared} bytes is more than the limit {limits.max_total_bytes}")
    prefix = _zip_prefix(files, report)
    dirs = [i for i in infos if i.is_dir() and i.orig_filename not in ("", prefix) and ".." not in i.orig_filename.split("/")]
    for info in dirs:
        report.add("zip", info.orig_filename, "unexpected folder entry")
    if len(report.problems) > problems_before:
        zf.close()
        return None
    by_name = {i.orig_filename[len(prefix):]: i for i in files}

    def reader(entry: str, limit: int) -> bytes:
        info = by_name[entry]
        try:
            with zf.open(info) as f:
                data = f.read(min(limit, info.file_size) + 1)
        except ZIP_ERRORS as exc:
            raise EntryError(f"corrupt zip entry: {exc}") from None
        if len(data) > info.file_size:
            raise EntryError(f"inflates to more than its declared {info.file_size} bytes")
        return data

    return Source("zip", {k: i.file_size for k, i in by_name.items()}, reader, zf.close)


def _zip_files(infos: list[zipfile.ZipInfo], report: BundleReport) -> tuple[list[zipfile.ZipInfo], int]:
    """The file entries that passed every per-entry check, and their declared uncompressed total."""
    files: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    declared = 0
    for info in infos:
        raw = info.orig_filename
        if raw in seen:
            report.add("zip", raw, "entry appears twice in the zip")
            continue
        seen.add(raw)
        why = _entry_problem(info)
        if why is None and info.is_dir():
            continue
        if why is None and (info.external_attr >> 16) and not stat.S_ISREG(info.external_attr >> 16):
            why = "not a regular file"
        if why is None:
            declared += info.file_size
            why = _zip_bomb(info)
        if why is not None:
            report.add("zip", raw, why)
            continue
        files.append(info)
    return files, declared


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry's name or kind is refused (None: it is not)."""
    raw = info.orig_filename
    parts = raw.split("/")
    if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
        return "absolute path: every entry must lie inside the bundle root"
    if "\\" in raw:
        return "backslash in entry name (a Windows path separator)"
    if ".." in parts:
        return "entry lies outside the bundle root ('..')"
    if any(p in ("", ".") for p in parts[:-1]) or "\x00" in raw:
        return "entry name is not a normalised relative path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink entry; symlinks are never followed"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    return None


def _zip_bomb(info: zipfile.ZipInfo) -> str | None:
    if info.file_size > ZIP_BOMB_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        return f"inflates {info.compress_size} bytes to {info.file_size} (ratio above {MAX_ZIP_RATIO}): a zip bomb"
    return None


def _zip_prefix(files: list[zipfile.ZipInfo], report: BundleReport) -> str:
    """Entries sit at the root, or all under one top folder (as zipping a folder gives): that folder's prefix."""
    tops = {i.orig_filename.split("/")[0] for i in files}
    depth = {len(i.orig_filename.split("/")) for i in files}
    if not depth or depth == {1}:
        return ""
    if depth == {2} and len(tops) == 1:
        return tops.pop() + "/"
    for info in files:
        if len(info.orig_filename.split("/")) > 1:
            report.add("zip", info.orig_filename, "nested path; entries must sit at the root or in one top folder")
    return ""


# ------------------------------------------------------------------ the digest


def bundle_digest(path: str | os.PathLike) -> str:
    """Content digest of a bundle: sha256 of a zip file, or of a folder's sorted
    (name, kind, content sha256) entries. Never follows symlinks; names quarantine copies
    and keys the drop folder's state."""
    path = Path(path)
    if path.is_file() and not path.is_symlink():
        return _sha256_regular(path)
    h = hashlib.sha256(b"mqepi-bundle-folder\n")
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                h.update(_digest_line(path, os.path.join(dirpath, name)).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _digest_line(root: Path, full: str) -> str:
    rel = os.path.relpath(full, root)
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        return f"L {rel} {os.readlink(full)}\n"
    if stat.S_ISREG(st.st_mode):
        return f"F {rel} {_sha256_regular(Path(full))}\n"
    return f"O {rel}\n"


def _sha256_regular(path: Path) -> str:
    """sha256 of a regular file, opened without following a symlink."""
    with open_regular(path) as f:
        return sha256_stream(f)

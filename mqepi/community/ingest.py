"""Ingesting community bundles: all or nothing, with quarantine for the rejected ones and a
drop folder processed each bundle once.

:func:`ingest` validates a bundle completely (:func:`~mqepi.community.validate.validate_bundle`),
then appends its re-stamped events through :meth:`mqepi.lake.store.Lake.append`. A rejected
bundle leaves the lake untouched; it can be copied, with its report, to a quarantine folder
outside the lake (:func:`quarantine`). :func:`ingest_drop_folder` runs :func:`ingest` over
each new bundle of a drop folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mqepi.community.bundle import bundle_digest
from mqepi.community.manifest import file_name
from mqepi.community.problems import DEFAULT_LIMITS, BundleRejected, BundleReport, CommunityError, Limits
from mqepi.community.validate import validate_bundle
from mqepi.lake.store import Lake


@dataclass
class IngestResult:
    """What :func:`ingest` did with one bundle."""

    bundle: str
    sha256: str
    submitter: str
    origin: str
    status: str  # ingested | already-ingested | valid (dry run)
    events: int
    rows_written: dict[str, int] = field(default_factory=dict)


@dataclass
class DropOutcome:
    """What :func:`ingest_drop_folder` did with one bundle (one line of its processed-state file)."""

    bundle: str
    sha256: str
    status: str  # ingested | already-ingested | rejected
    events: int = 0
    problems: int = 0
    quarantined_to: str | None = None


def ingest(bundle: str | os.PathLike, lake: Lake, *, limits: Limits = DEFAULT_LIMITS,
           quarantine_dir: str | os.PathLike | None = None, dry_run: bool = False) -> IngestResult:
    """Validate ``bundle`` completely, then append its events to ``lake`` with :meth:`Lake.append`.

    A bundle whose events the lake already holds is a no-op (``status = already-ingested``);
    one interrupted part-way is completed. A rejected bundle raises :class:`BundleRejected`
    (nothing written to the lake), after copying it and its report to ``quarantine_dir``
    when given. ``dry_run`` validates only.
    """
    if quarantine_dir is not None:
        _check_outside(Path(quarantine_dir), lake)
    try:
        checked = validate_bundle(bundle, lake, limits=limits)
    except BundleRejected as exc:
        if quarantine_dir is not None:
            exc.quarantined_to = quarantine(bundle, quarantine_dir, exc.report, lake=lake, limits=limits)
        raise
    result = IngestResult(Path(bundle).name, checked.sha256, checked.submitter, checked.origin, "valid", checked.events)
    if dry_run:
        return result
    if checked.already_ingested:
        result.status = "already-ingested"
        return result
    lake.init()
    for t, df in checked.frames.items():
        new = df.filter(~pl.col("event_id").is_in(list(checked.present.get(t, ())))) if checked.present.get(t) else df
        if new.height:
            written = lake.append(new, source=f"{result.bundle}/{file_name(t)}")
            result.rows_written[t] = written.rows_written
    result.status = "ingested"
    return result


def _check_outside(folder: Path, lake: Lake | None) -> None:
    if lake is None or "://" in lake.uri:
        return
    root = Path(lake.root).resolve()
    target = folder.resolve()
    if target == root or root in target.parents:
        raise CommunityError(f"quarantine folder {folder} lies inside the lake {lake.root}; it must be outside")


# ------------------------------------------------------------------ quarantine


def quarantine(bundle: str | os.PathLike, quarantine_dir: str | os.PathLike, report: BundleReport, *,
               lake: Lake | None = None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Copy a rejected bundle (regular files only, never following symlinks, at most twice
    the byte limit) and ``report.json`` to ``<quarantine_dir>/<digest[:16]>-<name>/``."""
    src, root = Path(bundle), Path(quarantine_dir)
    _check_outside(root, lake)
    digest = report.sha256 or bundle_digest(src)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", src.name)[:80].lstrip(".") or "bundle"
    target = root / f"{digest[:16]}-{safe}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        skipped = _copy_bundle(src, target, 2 * limits.max_total_bytes)
        data = report.to_dict() | {"quarantined_at": datetime.now(UTC).isoformat(), "not_copied": skipped}
        (target / "report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    except OSError as exc:
        raise CommunityError(f"cannot quarantine {src} in {root}: {exc}") from exc
    return target


def _copy_bundle(src: Path, target: Path, budget: int) -> list[str]:
    """Copy a zip as ``bundle.zip``, a folder's regular files under ``bundle/``, at most ``budget``
    bytes; return the names not copied."""
    skipped: list[str] = []
    if src.is_file() and not src.is_symlink():
        if src.stat().st_size <= budget:
            shutil.copyfile(src, target / "bundle.zip")
        else:
            skipped.append(src.name)
    elif src.is_dir() and not src.is_symlink():
        dest = target / "bundle"
        dest.mkdir(exist_ok=True)
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size <= budget:
                budget -= entry.stat(follow_symlinks=False).st_size
                shutil.copyfile(entry.path, dest / entry.name, follow_symlinks=False)
            else:
                skipped.append(entry.name)
    return skipped


# ------------------------------------------------------------------ the drop folder


def ingest_drop_folder(drop_dir: str | os.PathLike, lake: Lake, quarantine_dir: str | os.PathLike,
                       processed_state: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> list[DropOutcome]:
    """Ingest each bundle (folder or ``.zip``) of ``drop_dir`` once.

    ``processed_state`` is an append-only JSON-lines file, one line per bundle processed
    (its content digest and outcome); a bundle whose digest it holds is skipped. Names
    starting with ``.`` or ending in ``.partial``/``.tmp`` are uploads in progress and are
    left for a later pass. A lake write error (:class:`~mqepi.errors.LakeError`) propagates
    without recording the bundle, so the next pass retries it.
    """
    drop, state = Path(drop_dir), Path(processed_state)
    if not drop.is_dir():
        raise CommunityError(f"drop folder {drop} does not exist")
    done = _processed(state)
    outcomes = []
    for entry in sorted(drop.iterdir()):
        name = entry.name
        if name.startswith(".") or name.endswith((".partial", ".tmp")):
            continue
        digest = bundle_digest(entry)
        if digest in done:
            continue
        try:
            result = ingest(entry, lake, limits=limits, quarantine_dir=quarantine_dir)
            outcome = DropOutcome(name, digest, result.status, result.events)
        except BundleRejected as exc:
            outcome = DropOutcome(name, digest, "rejected", problems=len(exc.report.problems),
                                  quarantined_to=str(exc.quarantined_to) if exc.quarantined_to else None)
        _append_line(state, {**asdict(outcome), "at": datetime.now(UTC).isoformat()})
        done.add(digest)
        outcomes.append(outcome)
    return outcomes


def _processed(state: Path) -> set[str]:
    """The digests of the bundles the processed-state file records."""
    done: set[str] = set()
    if state.exists():
        for k, line in enumerate(state.read_text().splitlines()):
            try:
                done.add(json.loads(line)["sha256"])
            except (ValueError, KeyError, TypeError):
                raise CommunityError(f"{state}: line {k + 1} is not a processed-bundle record") from None
    return done


def _append_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())

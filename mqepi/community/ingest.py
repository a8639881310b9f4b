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
from mqepi.community.checks import check_lake
from mqepi.community.manifest import file_name
from mqepi.community.problems import DEFAULT_LIMITS, BundleRejected, BundleReport, CommunityError, Limits, short
from mqepi.community.sandbox import DEFAULT_TIMEOUT_S, validate_isolated
from mqepi.community.validate import CheckedBundle, validate_bundle
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
    reason: str | None = None  # a rejection's first problem (or what killed its validator)


def ingest(bundle: str | os.PathLike, lake: Lake, *, limits: Limits = DEFAULT_LIMITS,
           quarantine_dir: str | os.PathLike | None = None, dry_run: bool = False) -> IngestResult:
    """Validate ``bundle`` completely, then append its events to ``lake`` in one transaction.

    The bundle's own checks run first; then, holding the lake's commit lock
    (:meth:`Lake.transaction`), the checks against the lake and the append run as one atomic
    step, and one commit makes every event of the bundle visible at once: two ingests of
    overlapping bundles cannot both pass the lake checks, and an ingest killed part-way leaves
    nothing visible. A bundle whose events the lake already holds is a no-op (``status =
    already-ingested``). A rejected bundle raises :class:`BundleRejected` (nothing written to
    the lake), after copying it and its report to ``quarantine_dir`` when given. ``dry_run``
    validates only (against the lake as it is, without the lock).
    """
    if quarantine_dir is not None:
        _check_outside(Path(quarantine_dir), lake)
    try:
        if dry_run:
            checked = validate_bundle(bundle, lake, limits=limits)
            return IngestResult(Path(bundle).name, checked.sha256, checked.submitter, checked.origin, "valid",
                                checked.events)
        checked = validate_bundle(bundle, None, limits=limits)
        lake.init()
        with lake.transaction(f"ingest {checked.origin} {checked.sha256[:16]}"):
            return _append_checked(checked, lake)
    except BundleRejected as exc:
        if quarantine_dir is not None:
            exc.quarantined_to = quarantine(bundle, quarantine_dir, exc.report, lake=lake, limits=limits)
        raise


def _append_checked(checked: CheckedBundle, lake: Lake) -> IngestResult:
    """Inside the ingest's transaction: the checks against the lake, then every new event."""
    result = IngestResult(checked.path.name, checked.sha256, checked.submitter, checked.origin, "ingested",
                          checked.events)
    report = BundleReport(checked.path.name, checked.sha256, checked.submitter)
    checked.present = check_lake(checked.frames, lake, report)
    if report.problems:
        raise BundleRejected(report)
    if checked.already_ingested:
        result.status = "already-ingested"
        return result
    for t, df in checked.frames.items():
        known = checked.present.get(t)
        new = df.filter(~pl.col("event_id").is_in(list(known))) if known else df
        if new.height:
            written = lake.append(new, source=f"{result.bundle}/{file_name(t)}")
            result.rows_written[t] = written.rows_written
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
                       processed_state: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS,
                       memory_limit_bytes: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[DropOutcome]:
    """Ingest each bundle (folder or ``.zip``) of ``drop_dir`` once.

    Each new bundle is first validated in a child process (:mod:`~mqepi.community.sandbox`)
    with at most ``memory_limit_bytes`` of address space (default: from ``limits``) and
    ``timeout_s`` seconds; only a bundle the child found valid is ingested (:func:`ingest`,
    which checks it again, against the lake too). A bundle that the child rejects, or that
    kills it (memory, a signal) or outlasts it, is quarantined and recorded as rejected with the
    reason, and the pass goes on with the next bundle.

    ``processed_state`` is an append-only JSON-lines file, one line per bundle processed
    (its content digest, outcome and, for a rejection, the first reason); a bundle whose digest
    it holds is skipped. Names starting with ``.`` or ending in ``.partial``/``.tmp`` are
    uploads in progress and are left for a later pass. A lake write error
    (:class:`~mqepi.errors.LakeError`) propagates without recording the bundle, so the next pass
    retries it; so does a validator that cannot start (:class:`CommunityError`).
    """
    drop, state = Path(drop_dir), Path(processed_state)
    if not drop.is_dir():
        raise CommunityError(f"drop folder {drop} does not exist")
    _check_outside(Path(quarantine_dir), lake)
    done = _processed(state)
    outcomes = []
    for entry in sorted(drop.iterdir()):
        name = entry.name
        if name.startswith(".") or name.endswith((".partial", ".tmp")):
            continue
        digest = bundle_digest(entry)
        if digest in done:
            continue
        outcome = _drop_one(entry, digest, lake, quarantine_dir, limits, memory_limit_bytes, timeout_s)
        record = {k: v for k, v in asdict(outcome).items() if k != "reason" or v is not None}
        _append_line(state, {**record, "at": datetime.now(UTC).isoformat()})
        done.add(digest)
        outcomes.append(outcome)
    return outcomes


def _drop_one(entry: Path, digest: str, lake: Lake, quarantine_dir: str | os.PathLike, limits: Limits,
              memory_limit_bytes: int | None, timeout_s: float) -> DropOutcome:
    """One bundle of the drop folder: validated in a child, then ingested; its outcome (with the
    first reason when rejected)."""
    isolated = validate_isolated(entry, limits=limits, memory_limit_bytes=memory_limit_bytes, timeout_s=timeout_s)
    if not isolated.ok:
        report = isolated.report
        report.sha256 = digest
        kept = quarantine(entry, quarantine_dir, report, lake=lake, limits=limits)
        return _rejected(entry.name, digest, report, kept)
    try:
        result = ingest(entry, lake, limits=limits, quarantine_dir=quarantine_dir)
    except BundleRejected as exc:
        return _rejected(entry.name, digest, exc.report, exc.quarantined_to)
    return DropOutcome(entry.name, digest, result.status, result.events)


def _rejected(name: str, digest: str, report: BundleReport, kept: Path | None) -> DropOutcome:
    """The outcome of a rejected bundle, with its first reason."""
    reason = short(str(report.problems[0]), 300) if report.problems else "rejected"
    return DropOutcome(name, digest, "rejected", problems=len(report.problems),
                       quarantined_to=str(kept) if kept else None, reason=reason)


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

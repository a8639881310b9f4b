"""Checking a whole bundle: every check of docs/community.md, stage by stage, before anything is written.

:func:`validate_bundle` opens the bundle (:mod:`~mqepi.community.bundle`), reads and checks
its manifest (:mod:`~mqepi.community.manifest`), each file (:mod:`~mqepi.community.files`),
the files together and, given a lake, the bundle against the lake
(:mod:`~mqepi.community.checks`). A stage that cannot be completed stops the later stages
that depend on it; otherwise every problem is collected. A bundle that passed comes back
re-stamped (:func:`restamp`); one that did not raises :class:`BundleRejected`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import polars as pl

from mqepi.community.bundle import Source, bundle_digest, open_bundle, read_entry
from mqepi.community.checks import check_across_files, check_lake
from mqepi.community.files import read_files
from mqepi.community.manifest import MANIFEST, origin_for, parse_manifest
from mqepi.community.problems import DEFAULT_LIMITS, BundleRejected, BundleReport, Limits
from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.rig.hardware import hardware_id
from mqepi.schemas import EVENT_TYPES


@dataclass
class CheckedBundle:
    """A bundle that passed every check: its manifest and one re-stamped frame per event type."""

    path: Path
    sha256: str
    manifest: dict
    frames: dict[str, pl.DataFrame]
    #: per event type, the ids of this bundle already in the lake (filled when a lake was given)
    present: dict[str, set[str]] = field(default_factory=dict)

    @property
    def submitter(self) -> str:
        return self.manifest["submitter"]["id"]

    @property
    def origin(self) -> str:
        return origin_for(self.submitter)

    @property
    def events(self) -> int:
        return sum(df.height for df in self.frames.values())

    @property
    def already_ingested(self) -> bool:
        return bool(self.present) and all(len(self.present.get(t, ())) == df.height for t, df in self.frames.items())


def restamp(df: pl.DataFrame, origin: str, hardware: dict | None = None) -> pl.DataFrame:
    """``df`` with ``origin`` set and every ``event_id`` recomputed (origin is hashed content).
    With ``hardware`` (the manifest's ``hardware`` object; given for ``run`` events): every row's
    ``hardware_id`` is its hash (:func:`mqepi.rig.hardware.hardware_id`), whatever the file said,
    and the rows are of the run schema's current version (which has that column)."""
    df = df.with_columns(pl.lit(origin, dtype=pl.Utf8).alias("origin"))
    if hardware is not None:
        df = df.with_columns(pl.lit(hardware_id(hardware), dtype=pl.Utf8).alias("hardware_id"),
                             pl.lit(EVENT_TYPES["run"].version, dtype=pl.Int32).alias("schema_version"))
        df = df.select([c for c in EVENT_TYPES["run"].polars_schema if c in df.columns])
    return df.with_columns(events.content_ids(df))


def validate_bundle(bundle: str | os.PathLike, lake: Lake | None = None, *, limits: Limits = DEFAULT_LIMITS) -> CheckedBundle:
    """Check everything about ``bundle``; return it re-stamped, or raise :class:`BundleRejected`.

    With ``lake``, also check it against the lake (runs and configurations already there)
    and note which of its events the lake already holds. Reads only; writes nothing.
    """
    path = Path(bundle)
    report = BundleReport(path.name)
    source = open_bundle(path, limits, report)
    if source is None:
        _reject(report, path)
    try:
        return _validate(path, source, lake, limits, report)
    finally:
        source.close()


def _reject(report: BundleReport, path: Path) -> NoReturn:
    if report.sha256 is None:
        try:
            report.sha256 = bundle_digest(path)
        except OSError:
            pass
    raise BundleRejected(report)


def _validate(path: Path, source: Source, lake: Lake | None, limits: Limits, report: BundleReport) -> CheckedBundle:
    manifest = _read_manifest(path, source, limits, report)
    report.submitter = manifest["submitter"]["id"]
    frames, unusable = read_files(source, manifest, limits, report)
    if not unusable:
        # every file has its exact columns and dtypes: the cross-file checks can run (and
        # report too) even where values already failed, so the report lists every reason
        check_across_files(frames, manifest, report, limits)
    if report.problems:
        _reject(report, path)
    report.sha256 = bundle_digest(path)
    origin = origin_for(manifest["submitter"]["id"])
    frames = {t: restamp(frames[t], origin, manifest["hardware"] if t == "run" else None)
              for t in EVENT_TYPES if t in frames and frames[t].height}
    checked = CheckedBundle(path, report.sha256, manifest, frames)
    if lake is not None:
        checked.present = check_lake(checked.frames, lake, report)
        if report.problems:
            _reject(report, path)
    return checked


def _read_manifest(path: Path, source: Source, limits: Limits, report: BundleReport) -> dict:
    """The bundle's totals within the limits and its manifest parsed; else the bundle is rejected here."""
    entries = source.entries
    if not entries:
        report.add("bundle", None, "empty bundle: no manifest.json and no event files")
        _reject(report, path)
    data_files = [n for n in entries if n != MANIFEST]
    if len(data_files) > limits.max_files:
        report.add("limit", None, f"{len(data_files)} files, more than the limit {limits.max_files}")
    total = sum(entries.values())
    if total > limits.max_total_bytes:
        report.add("limit", None, f"{total} bytes in all, more than the limit {limits.max_total_bytes}")
    if MANIFEST not in entries:
        report.add("manifest", MANIFEST, "manifest.json is missing")
    if report.problems:
        _reject(report, path)
    raw = read_entry(source, MANIFEST, limits.max_manifest_bytes, report)
    manifest = parse_manifest(raw, report, limits) if raw is not None else None
    if manifest is None:
        _reject(report, path)
    return manifest

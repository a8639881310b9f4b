"""What can go wrong with a community bundle: the errors, one problem, the report listing
every problem of a bundle, and the limits a bundle must keep.

Every check of the package adds to one :class:`BundleReport`; :meth:`BundleReport.flag`
turns the offending rows of a frame into one problem (first rows, first value, count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from mqepi.errors import MqepiError
from mqepi.schemas import EVENT_TYPES

#: Rows per problem quoted in a report line; problems per report.
QUOTED_ROWS = 5
MAX_PROBLEMS = 200


class CommunityError(MqepiError):
    """A bundle could not be built, or a drop folder or quarantine could not be used."""


class BundleRejected(CommunityError):
    """A bundle failed validation; ``report`` lists every problem. Nothing was written to the lake."""

    def __init__(self, report: BundleReport):
        self.report = report
        self.quarantined_to: Path | None = None
        n = len(report.problems)
        super().__init__(f"bundle {report.bundle} rejected: {n} problem{'s' if n != 1 else ''}; first: {report.problems[0]}")


@dataclass(frozen=True)
class Limits:
    """What a bundle may hold. The defaults fit a sweep of a few Pi 5 runs; tests pass smaller ones."""

    max_total_bytes: int = 512 * 1024**2  # all files together, as stored (a zip: inflated); no more than they may decode to
    max_files: int = len(EVENT_TYPES)  # Parquet files (one per event type)
    max_entries: int = 64  # zip entries / folder entries, manifest and directories included
    max_manifest_bytes: int = 16 * 1024**2
    max_rows_per_file: int = 20_000_000
    max_row_groups: int = 10_000
    max_row_group_rows: int = 1_048_576
    max_row_group_bytes: int = 512 * 1024**2  # uncompressed, from the Parquet footer
    max_string_bytes: int = 65_536  # any one string value
    max_list_len: int = 64  # any one list value (choice_scores)
    # what the files may decode to (Arrow bytes: string data + offsets, fixed-width values), checked
    # batch by batch before each batch is decoded. Validation peaks at about 4x this plus the
    # interpreter (benchmarks/ingest_memory.py): 1 GiB is ~4 M power samples, ~4.5 GiB of memory
    max_column_decoded_bytes: int = 256 * 1024**2  # one column of one file
    max_file_decoded_bytes: int = 512 * 1024**2  # one file
    max_decoded_bytes: int = 512 * 1024**2  # the whole bundle: ingest peaks near 125 MiB + 5 x this
    # what the events may declare, before anything is sized by it
    max_runs: int = 256  # distinct run ids (the paper's matrix x 5 repeats is 120)
    max_configs: int = 64  # distinct configurations, and quant_config events
    max_layers: int = 1024  # a quant_config's n_layers
    max_question_ids: int = 100_000  # all question sets of the manifest together
    # plausibility: power and thermal samples lie within their run's windows, give or take this
    window_slack_s: float = 3600.0


DEFAULT_LIMITS = Limits()


def short(value, n: int = 80) -> str:
    """``value`` as text for a report line: a string as it is, anything else as its repr, at most ``n`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, float) and math.isnan(value):
        text = "nan"
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass
class Problem:
    """One reason a bundle is rejected."""

    check: str  # bundle | zip | manifest | file | parquet | limit | schema | identity | reference | physics | map | lake
    file: str | None
    detail: str
    column: str | None = None
    row: int | None = None
    value: object = None

    def __str__(self) -> str:
        where = [self.file or "bundle"]
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.value is not None:
            where.append(f"value {short(self.value)}")
        return f"{', '.join(where)}: {self.detail}"


@dataclass
class BundleReport:
    """Every problem found in one bundle."""

    bundle: str
    sha256: str | None = None  # content digest of the bundle (bundle.bundle_digest)
    submitter: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, file: str | None, detail: str, **where) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(check, file, detail, **where))
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(Problem("bundle", None, f"more than {MAX_PROBLEMS} problems; the rest are not listed"))

    def flag(self, check: str, file: str, bad: pl.DataFrame, column: str | None, detail: str) -> None:
        """One problem for the rows of ``bad`` (with a ``_row`` column): first rows, first value, count."""
        if bad.height == 0:
            return
        rows = bad["_row"].head(QUOTED_ROWS).to_list()
        more = f" (+{bad.height - len(rows)} more)" if bad.height > len(rows) else ""
        first = bad.row(0, named=True)
        value = first.get(column) if column else None
        self.add(check, file, f"{detail} (rows {', '.join(map(str, rows))}{more})", column=column, row=rows[0], value=value)

    def text(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "sha256": self.sha256, "submitter": self.submitter, "accepted": self.ok,
                "problems": [{**asdict(p), "value": None if p.value is None else short(p.value)} for p in self.problems]}

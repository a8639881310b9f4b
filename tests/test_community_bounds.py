"""Community bundles that attack the validator's resources or physics: what a bundle decodes to,
numbers it declares, how many runs it holds, physically impossible streams, and the drop
folder's sandbox for a bundle that kills its validator anyway.

Every hostile bundle is a real one: the good bundle of tests/test_community.py with one file
rewritten by pyarrow or polars (dictionary-encoded strings, long lists, extra runs ...) and the
manifest updated to match, so each reaches the check it attacks."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_community
from factories import T0
from test_community import RUNS, edit, read_manifest, refresh, set_row, snapshot, write_manifest

from mqepi.community.ingest import ingest, ingest_drop_folder
from mqepi.community.problems import BundleRejected, Limits
from mqepi.community.sandbox import CHILD_ENV, validate_isolated
from mqepi.community.validate import validate_bundle
from mqepi.lake.store import Lake

PS = "power_sample"
BOMB_ROWS, BOMB_STRING = 20_000, 60_000  # the review's bomb: 1.2 GB from a file of a few KB
CENTURY_NS = 100 * 365 * 24 * 3600 * 10**9
#: Decode bounds out of the way, for bundles meant to reach the sandbox's memory limit.
UNBOUNDED = Limits(max_column_decoded_bytes=1 << 40, max_file_decoded_bytes=1 << 40, max_decoded_bytes=1 << 40)
DEFAULTS = Limits()

#: The fixtures of tests/test_community.py: a lab lake with two runs and its good bundle.
source_lake = test_community.source_lake
good_bundle = test_community.good_bundle


@pytest.fixture
def bundle(good_bundle, tmp_path) -> Path:
    """A fresh copy of the good bundle to change."""
    return Path(shutil.copytree(good_bundle, tmp_path / "bundle"))


def rejection(path: Path, limits: Limits = DEFAULTS, lake: Lake | None = None) -> str:
    """The report text of ``path``, which must be rejected."""
    with pytest.raises(BundleRejected) as info:
        validate_bundle(path, lake, limits=limits)
    return info.value.report.text()


def write_table(bundle: Path, event_type: str, table: pa.Table) -> Path:
    """Replace ``event_type``'s file by ``table`` written without an Arrow schema (the reader sees
    plain strings even where they were written dictionary-encoded); the manifest follows."""
    name = f"{event_type}.parquet"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", store_schema=False)
    (bundle / name).write_bytes(buf.getvalue())
    refresh(bundle, name)
    return bundle / name


def repeated(bundle: Path, event_type: str, n: int, values: dict) -> pa.Table:
    """``n`` copies of the first row of ``event_type``'s file, ``values`` overriding columns; every
    string column dictionary-encoded (one value, ``n`` indices), so nothing of size n x string exists here."""
    row = pq.read_table(bundle / f"{event_type}.parquet").slice(0, 1)
    zeros = pa.array(np.zeros(n, dtype=np.int32))
    columns = []
    for field in row.schema:
        value = values.get(field.name, row.column(field.name)[0].as_py())
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            columns.append(pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string())))
        else:
            columns.append(pa.array([value] * n, field.type))
    return pa.table(columns, names=row.schema.names)


def dictionary_bomb(bundle: Path) -> Path:
    """The review's bomb: power_sample.parquet as 20,000 rows sharing one 60 KB ``producer``."""
    path = write_table(bundle, PS, repeated(bundle, PS, BOMB_ROWS, {"producer": "x" * BOMB_STRING}))
    assert path.stat().st_size < 64_000  # a few KB that decode to 1.2 GB
    return bundle


# ------------------------------------------------------------------ what a bundle decodes to


def test_dictionary_bomb_is_rejected_before_it_is_decoded(bundle, tmp_path):
    dictionary_bomb(bundle)
    lake = Lake(tmp_path / "lake")
    lake.init()
    before = snapshot(lake.root)
    with pytest.raises(BundleRejected) as info:
        ingest(bundle, lake, quarantine_dir=tmp_path / "q")
    problems = info.value.report.problems
    bound = DEFAULTS.max_column_decoded_bytes
    assert [(p.check, p.file, p.column) for p in problems] == [("limit", "power_sample.parquet", "producer")]
    assert f"decodes to more than the limit {bound} bytes per column (in its first {BOMB_ROWS} rows)" in problems[0].detail
    assert snapshot(lake.root) == before


def test_decoded_bytes_are_bounded_per_file(bundle):
    dictionary_bomb(bundle)
    limits = Limits(max_column_decoded_bytes=1 << 40, max_file_decoded_bytes=100_000_000)
    assert "power_sample.parquet: decodes to more than the limit 100000000 bytes per file" in rejection(bundle, limits)


def test_decoded_bytes_are_bounded_per_bundle_and_reading_stops(bundle):
    text = rejection(bundle, Limits(max_decoded_bytes=200_000))
    assert text.count("the bundle decodes to more than the limit 200000 bytes; reading stopped at this file") == 1
    assert len(text.splitlines()) == 1  # the files after it are not read


def test_footer_declared_uncompressed_size_is_bounded_per_file(bundle):
    text = rejection(bundle, Limits(max_file_decoded_bytes=10_000))
    assert "tensor_inventory.parquet: declares" in text
    assert "bytes of uncompressed data, more than the limit 10000 per file" in text


def test_list_values_are_bounded_from_the_footer(bundle):
    answers = pq.read_table(bundle / "benchmark_answer.parquet")
    scores = pa.array([[-1.0] * 1000] * answers.num_rows, answers.schema.field("choice_scores").type)
    write_table(bundle, "benchmark_answer", answers.set_column(answers.schema.get_field_index("choice_scores"),
                                                                "choice_scores", scores))
    text = rejection(bundle)
    assert f"row group 0 declares {1000 * answers.num_rows} list values for {answers.num_rows} rows, more than 64 per row" in text


# ------------------------------------------------------------------ numbers a bundle declares


def test_n_layers_of_a_model_without_profile_sizes_nothing(bundle):
    edit("quant_config", lambda d: d.with_columns(model=pl.lit("no-profile-model"), n_layers=pl.lit(2**31 - 1, pl.Int32)))(
        bundle, bundle)
    assert "column n_layers, row 0, value 2147483647: n_layers above the sane bound 1024" in rejection(bundle)


def test_map_coverage_without_profile_is_checked_without_a_range(bundle):
    # smollm2-135m's maps cover 30 layers; without a profile the declared n_layers must match them
    edit("quant_config", lambda d: d.with_columns(model=pl.lit("no-profile-model"), n_layers=pl.lit(31, pl.Int32)))(
        bundle, bundle)
    assert "map's layers do not cover 0-30 exactly once" in rejection(bundle)
    edit("quant_config", lambda d: d.with_columns(n_layers=pl.lit(30, pl.Int32)))(bundle, bundle)
    assert "do not cover" not in rejection(bundle)  # rejected for the model, not for the coverage


def test_manifest_numbers_are_bounded(bundle):
    manifest = read_manifest(bundle)
    manifest["files"][0]["rows"] = 10**30
    write_manifest(bundle, manifest)
    assert "declares 1000000000000000000000000000000 rows, more than the limit 20000000 per file" in rejection(bundle)
    manifest["files"][0]["rows"] = 1
    write_manifest(bundle, manifest)
    assert "20 question ids in all, more than the limit 5" in rejection(bundle, Limits(max_question_ids=5))


@pytest.mark.parametrize(("event_type", "column", "value", "bound"), [
    ("perplexity", "context", 2**30, 1 << 24), ("throughput", "n_threads", 100_000, 1 << 12),
    ("run", "repeat", 2**31 - 1, 1 << 16),
])
def test_event_numbers_are_bounded(bundle, event_type, column, value, bound):
    edit(event_type, set_row(column, 0, value))(bundle, bundle)
    assert f"column {column}, row 0, value {value}: {column} above the sane bound {bound}" in rejection(bundle)


def test_runs_per_bundle_are_bounded_before_the_checks_they_size(bundle):
    def more_runs(d: pl.DataFrame) -> pl.DataFrame:
        extra = [d.filter(pl.col("run_id") == "run-a").with_columns(run_id=pl.lit(f"extra-{i}")) for i in range(300)]
        return pl.concat([d, *extra])

    edit("run", more_runs)(bundle, bundle)
    problems = pytest.raises(BundleRejected, validate_bundle, bundle).value.report.problems
    assert [str(p) for p in problems] == ["bundle, value 302: 302 runs, more than the limit 256 per bundle"]


def test_configurations_per_bundle_are_bounded(bundle):
    assert "2 configurations, more than the limit 1 per bundle" in rejection(bundle, Limits(max_configs=1))


# ------------------------------------------------------------------ physically impossible


def epi_meter_stream(rows: int, spacing_ns: int, step_w: float):
    """power_sample.parquet as one epi-meter channel of ``rows`` readings (the manifest's meter: epi-meter)."""

    def mutate(bundle: Path, tmp: Path) -> Path:
        def change(d: pl.DataFrame) -> pl.DataFrame:
            i = pl.int_range(0, rows, dtype=pl.Int64, eager=True)
            return pl.concat([d.head(1)] * rows).with_columns(
                power_source=pl.lit("epi-meter"), seq=i, meter_time_ns=i * spacing_ns, host_time_ns=T0 + i * spacing_ns,
                host_monotonic_ns=i * spacing_ns, power_w=3.0 + (i % 20).cast(pl.Float64) * step_w,
                energy_counter_j=i.cast(pl.Float64))

        edit(PS, change)(bundle, tmp)
        manifest = read_manifest(bundle)
        manifest["meter"]["type"] = "epi-meter"
        write_manifest(bundle, manifest)
        return bundle

    return mutate


def finished_twice(d: pl.DataFrame) -> pl.DataFrame:
    again = d.filter((pl.col("run_id") == "run-a") & (pl.col("status") == "finished")).with_columns(repeat=pl.lit(1, pl.Int32))
    return pl.concat([d, again])


IMPOSSIBLE = [
    ("epi_meter_1ns_spacing", epi_meter_stream(2000, 1, 1.0), "readings of one meter channel faster than epi-meter's "
     "fastest rate 349.1 Hz (e.g. 2000 within 2e-06 s)"),
    ("epi_meter_picowatt_steps", epi_meter_stream(40, 200_000_000, 1e-12),
     "power readings of one meter channel step by 1e-12 W, finer than epi-meter can resolve (1.53e-05 W)"),
    ("window_start_a_century_ahead", edit("phase", lambda d: d.with_columns(start_ns=pl.col("start_ns") + CENTURY_NS,
                                                                          end_ns=pl.col("end_ns") + CENTURY_NS)),
     f"phase.parquet, column start_ns, row 0, value {T0 + CENTURY_NS}: time in the future"),
    ("sample_a_century_ahead", edit(PS, set_row("host_time_ns", 39, T0 + CENTURY_NS)),
     f"power_sample.parquet, column host_time_ns, row 39, value {T0 + CENTURY_NS}: time in the future"),
    ("zero_length_window", edit("phase", lambda d: set_row("end_ns", 1, d["start_ns"][1])(d)),
     "window does not end after it starts (zero-length or reversed)"),
    ("sample_outside_every_window", edit("thermal_sample", set_row("host_time_ns", 7, T0 + 3 * 3600 * 10**9)),
     f"thermal_sample.parquet, column host_time_ns, row 7, value {T0 + 3 * 3600 * 10**9}: sample outside its run's windows"),
    ("finished_twice_with_two_repeats", edit("run", finished_twice), "run ended 2 times (finished, finished)"),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in IMPOSSIBLE], ids=[c[0] for c in IMPOSSIBLE])
def test_physically_impossible_bundle_is_rejected(bundle, tmp_path, mutate, expected):
    text = rejection(mutate(bundle, tmp_path))
    assert expected in text, text


def test_impossible_times_and_repeats_say_why(bundle, tmp_path):
    edit("run", finished_twice)(bundle, tmp_path)
    edit("thermal_sample", set_row("host_time_ns", 7, T0 + 3 * 3600 * 10**9))(bundle, tmp_path)
    edit("phase", set_row("end_ns", 4, T0 + CENTURY_NS))(bundle, tmp_path)  # run-b's: run-a's span stays
    text = rejection(bundle)
    assert "run events disagree on repeat" in text
    assert "sample outside its run's windows (first start to last end, +-3600 s)" in text
    assert "time in the future (more than a day ahead)" in text


def test_a_plausible_epi_meter_stream_is_accepted(bundle, tmp_path):
    epi_meter_stream(400, 50_000_000, 0.5)(bundle, tmp_path)  # 20 Hz, half-watt steps
    assert validate_bundle(bundle).events > 0


# ------------------------------------------------------------------ the sandbox and the drop folder


def test_isolated_validation_returns_the_same_verdict_as_plain_data(bundle, good_bundle, tmp_path):
    valid = validate_isolated(good_bundle)
    assert valid.ok and valid.events == validate_bundle(good_bundle).events
    edit("benchmark_answer", lambda d: d.with_columns(origin=pl.lit("lab")))(bundle, tmp_path)
    rejected = validate_isolated(bundle)
    assert rejected.status == "rejected" and rejected.report.text() == rejection(bundle)


def validator_address_space(bundle: Path) -> int:
    """Peak address space (bytes) of a validator child, as the sandbox starts it, checking ``bundle``."""
    code = ("import sys\nfrom mqepi.community.validate import validate_bundle\nvalidate_bundle(sys.argv[1])\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmPeak')) * 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], env={**os.environ, **CHILD_ENV}, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the child's address space from /proc")
def test_drop_folder_records_a_bundle_that_kills_its_validator_and_goes_on(bundle, good_bundle, tmp_path):
    drop, quarantine, state = tmp_path / "drop", tmp_path / "quarantine", tmp_path / "processed.jsonl"
    drop.mkdir()
    dictionary_bomb(bundle)
    shutil.move(bundle, drop / "a-bomb")
    shutil.copytree(good_bundle, drop / "b-good")
    # enough address space to validate the good bundle, far too little to decode 1.2 GB
    memory = validator_address_space(good_bundle) + 512 * 1024**2
    lake = Lake(tmp_path / "lake")
    outcomes = ingest_drop_folder(drop, lake, quarantine, state, limits=UNBOUNDED, memory_limit_bytes=memory)
    assert [(o.bundle, o.status) for o in outcomes] == [("a-bomb", "rejected"), ("b-good", "ingested")]
    records = [json.loads(line) for line in state.read_text().splitlines()]
    assert records[0]["status"] == "rejected" and "memory" in records[0]["reason"].lower(), records[0]
    assert "reason" not in records[1]
    report = json.loads(Path(outcomes[0].quarantined_to, "report.json").read_text())
    assert report["accepted"] is False and "memory" in report["problems"][0]["detail"].lower()
    assert set(lake.read("run")["run_id"]) == set(RUNS)
    assert ingest_drop_folder(drop, lake, quarantine, state, limits=UNBOUNDED, memory_limit_bytes=memory) == []


def test_drop_folder_records_a_bundle_that_outlasts_its_validator(good_bundle, tmp_path):
    drop, state = tmp_path / "drop", tmp_path / "processed.jsonl"
    drop.mkdir()
    shutil.copytree(good_bundle, drop / "slow")
    lake = Lake(tmp_path / "lake")
    outcomes = ingest_drop_folder(drop, lake, tmp_path / "quarantine", state, timeout_s=0.001)
    assert [(o.bundle, o.status) for o in outcomes] == [("slow", "rejected")]
    record = json.loads(state.read_text())
    assert record["reason"] == "bundle: validation took longer than the limit 0.001 s; stopped"
    assert not Path(lake.root).exists()

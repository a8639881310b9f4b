"""Community bundles: submit -> ingest round trip, and hostile bundles that must all be
rejected with their own message while the lake stays byte-identical.

Every hostile bundle is made from one good bundle (built once by ``build_bundle`` from a
lab lake with two runs), changed in one way."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from factories import T0, batch, sha
from typer.testing import CliRunner

from mqepi import cli
from mqepi.cli import community as cli_community
from mqepi.cli.community import ingest_command, submit_command
from mqepi.community.ingest import ingest, ingest_drop_folder
from mqepi.community.problems import DEFAULT_LIMITS, BundleRejected, CommunityError, Limits
from mqepi.community.submit import build_bundle
from mqepi.community.validate import validate_bundle
from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.quant import maps
from mqepi.quant.expansion import expand
from mqepi.quant.quantize import Quantized
from mqepi.quant.quantize import record as record_quantization
from mqepi.results import sql

# ------------------------------------------------------------------ a lab lake with two runs

MODEL = "smollm2-135m"
BASE_SHA = sha("smollm2-base")
COMMIT = "b6543"
QSET = sha("mmlu-synthetic-set")
RUNS = {"run-a": "uniform_q4km", "run-b": "uniform_q8"}
SUBMITTER = "alice"


def record_config(lake: Lake, config_id: str) -> None:
    """quant_config, quantization and tensor_inventory of one configuration, as quantize records them."""
    profile = maps.load_profile(MODEL)
    qmap = maps.load_map(maps.maps_dir(MODEL) / f"{config_id}.json", profile)
    exp = expand(qmap, profile)
    q = Quantized(config_id=config_id, model=MODEL, path=f"/tmp/{config_id}.gguf", file_sha256=sha(f"file-{config_id}"),
                  file_size_bytes=100_000_000, predicted_data_bytes=1, predicted_file_bytes=1, actual_data_bytes=1,
                  bits_per_weight=exp.bits_per_weight, fallbacks=0, duration_s=2.5, reused=False,
                  effective_map_sha256=exp.effective_sha256)
    actual = {t.name: (t.effective_type, t.n_bytes) for t in exp.tensors}
    record_quantization(lake, exp, q, actual, BASE_SHA, COMMIT, "quant-host")


def record_run(lake: Lake, run_id: str, config_id: str, t0: int = T0, n: int = 40, m: int = 20) -> None:
    """One finished run: windows, two metered nodes, a thermal probe, MMLU answers, perplexity, throughput."""
    key = lambda k: {"model": [MODEL] * k, "config_id": [config_id] * k, "run_id": [run_id] * k}  # noqa: E731
    run_row = {**key(1), "repeat": [0], "file_sha256": [sha(f"file-{config_id}")], "power_source": ["simulated"],
               "host": ["pi-head"], "provenance_json": ['{"mqepi":"0.1.0"}'], "message": [None]}
    s, later = 10**9, t0 + 8 * 10**9
    lake.record("run", {**run_row, "status": ["started"]}, recorded_at_ns=t0)
    lake.record("phase", {**key(4), "phase": ["idle_baseline", "mmlu", "perplexity", "pp"],
                          "node": [None, "node0", "node0", "node0"],
                          "start_ns": [t0, t0 + 2 * s, t0 + 4 * s, t0 + 6 * s],
                          "end_ns": [t0 + s, t0 + 3 * s, t0 + 5 * s, t0 + 7 * s],
                          "tokens": [None, 6000, 4096, 512]}, recorded_at_ns=later)
    each = [i for _ in (0, 1) for i in range(n)]
    lake.record("power_sample", {
        **key(2 * n), "power_source": ["simulated"] * 2 * n, "meter_id": ["sim0"] * 2 * n,
        "channel": [c for c in (0, 1) for _ in range(n)], "node": [f"node{c}" for c in (0, 1) for _ in range(n)],
        "seq": each, "meter_time_ns": [i * 200_000_000 for i in each],
        "host_time_ns": [t0 + i * 200_000_000 for i in each], "host_monotonic_ns": [i * 200_000_000 for i in each],
        "power_w": [3.0 + c + (i % 5) * 0.5 for c in (0, 1) for i in range(n)], "voltage_v": [5.1] * 2 * n,
        "current_a": [0.8] * 2 * n, "power_factor": [None] * 2 * n, "frequency_hz": [None] * 2 * n,
        "energy_counter_j": [float(i) for i in each],
    }, recorded_at_ns=later)
    lake.record("thermal_sample", {**key(8), "node": ["node0"] * 8, "sensor": ["cpu-thermal"] * 8,
                                   "host_time_ns": [t0 + i * s for i in range(8)], "temperature_c": [50.0 + i for i in range(8)],
                                   "throttled": [False] * 8, "throttle_flags": [0] * 8}, recorded_at_ns=later)
    lake.record("benchmark_answer", {
        **key(m), "benchmark": ["mmlu"] * m, "question_set_sha256": [QSET] * m, "question_id": [f"q{i}" for i in range(m)],
        "subject": ["anatomy"] * m, "shots": [5] * m, "prompt_sha256": [sha(f"prompt{i}") for i in range(m)],
        "predicted": [i % 4 for i in range(m)], "gold": [1] * m, "correct": [i % 4 == 1 for i in range(m)],
        "choice_scores": [[-1.0, -0.5, -2.0, -3.0] for _ in range(m)], "tokens_evaluated": [300] * m,
    }, recorded_at_ns=later)
    lake.record("perplexity", {**key(1), "text_sha256": [sha("wiki")], "context": [512], "chunks": [8], "tokens": [4096],
                               "ppl": [21.5], "ppl_stderr": [0.4]}, recorded_at_ns=later)
    lake.record("throughput", {**key(1), "test": ["pp"], "n_prompt": [512], "n_gen": [0], "repetitions": [3],
                               "n_threads": [4], "tokens_per_s": [120.0], "tokens_per_s_stddev": [2.0], "rpc_nodes": [0]},
                recorded_at_ns=later)
    lake.record("run", {**run_row, "status": ["finished"]}, recorded_at_ns=t0 + 9 * s)


def fill(lake: Lake) -> Lake:
    lake.init()
    for k, (run_id, config_id) in enumerate(RUNS.items()):
        record_config(lake, config_id)
        record_run(lake, run_id, config_id, T0 + k * 100 * 10**9)
    return lake


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def source_lake(tmp_path_factory) -> Lake:
    return fill(Lake(tmp_path_factory.mktemp("source") / "lake"))


@pytest.fixture(scope="module")
def good_bundle(source_lake, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "good"
    return build_bundle(source_lake, list(RUNS), out, submitter=SUBMITTER, contact="alice@example.org",
                        meter_calibration="none: simulated meter")


@pytest.fixture(scope="module")
def lab_lake_template(tmp_path_factory) -> Path:
    """A lake with unrelated lab data: a rejected bundle must leave it byte-identical."""
    lake = Lake(tmp_path_factory.mktemp("template") / "lake")
    lake.init()
    for t in ("run", "phase", "power_sample", "benchmark_answer"):
        lake.append(batch(t, 5, run_id="lab-1", config_id="uniform_q2k"))
    return Path(lake.root)


@pytest.fixture
def lab_lake(lab_lake_template, tmp_path) -> Lake:
    shutil.copytree(lab_lake_template, tmp_path / "lake")
    return Lake(tmp_path / "lake")


def snapshot(root) -> list[tuple[str, str]]:
    """Every file and folder under ``root`` with the sha256 of its bytes (lock files: their
    names only; a lock file holds the last holder's record, not data)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root).split(os.sep)[0] == "_locks":
            out.extend((os.path.relpath(os.path.join(dirpath, f), root), "lock") for f in filenames)
            continue
        for d in dirnames:
            out.append((os.path.relpath(os.path.join(dirpath, d), root), "dir"))
        for f in filenames:
            full = os.path.join(dirpath, f)
            out.append((os.path.relpath(full, root), hashlib.sha256(Path(full).read_bytes()).hexdigest()))
    return sorted(out)


def parquet_bytes(df: pl.DataFrame, **kwargs) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", **kwargs)
    return buf.getvalue()


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))


def refresh(bundle: Path, name: str) -> None:
    """Make manifest.json agree with the file ``name`` (hash, bytes, rows where readable)."""
    manifest = read_manifest(bundle)
    data = (bundle / name).read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            try:
                entry["rows"] = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
            except Exception:
                pass
    write_manifest(bundle, manifest)


def edit(event_type: str, change: Callable[[pl.DataFrame], pl.DataFrame], *, rehash: bool = True, **write):
    """A mutation: change one file's frame, recompute ids (unless told not to), update the manifest."""

    def mutate(bundle: Path, tmp: Path) -> Path:
        name = f"{event_type}.parquet"
        df = change(pl.read_parquet(bundle / name))
        if rehash:
            df = df.with_columns(events.content_ids(df))
        (bundle / name).write_bytes(parquet_bytes(df, **write))
        refresh(bundle, name)
        return bundle

    return mutate


def patch(change: Callable[[dict], None]):
    def mutate(bundle: Path, tmp: Path) -> Path:
        manifest = read_manifest(bundle)
        change(manifest)
        write_manifest(bundle, manifest)
        return bundle

    return mutate


def raw_file(name: str, data: bytes | Callable[[bytes], bytes], *, update_manifest: bool = True):
    def mutate(bundle: Path, tmp: Path) -> Path:
        old = (bundle / name).read_bytes() if (bundle / name).exists() else b""
        (bundle / name).write_bytes(data(old) if callable(data) else data)
        if update_manifest:
            refresh(bundle, name)
        return bundle

    return mutate


def zipped(entries: Callable[[Path], list[tuple[zipfile.ZipInfo | str, bytes]]], name: str = "bundle.zip"):
    """A zip holding ``entries(bundle)``; plain names get a regular file mode."""

    def mutate(bundle: Path, tmp: Path) -> Path:
        path = tmp / name
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            warnings.simplefilter("ignore")  # a duplicate name is the point of one case
            for info, data in entries(bundle):
                if isinstance(info, str):
                    info = zipfile.ZipInfo(info)
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        return path

    return mutate


def good_entries(bundle: Path, prefix: str = "") -> list[tuple[str, bytes]]:
    return [(prefix + p.name, p.read_bytes()) for p in sorted(bundle.iterdir())]


def lying_zip(bundle: Path, tmp: Path) -> Path:
    """A zip whose headers say run.parquet inflates to fewer bytes than it does."""
    path = zipped(good_entries)(bundle, tmp)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("run.parquet")
    small = (100).to_bytes(4, "little")
    data[info.header_offset + 22: info.header_offset + 26] = small  # local header: uncompressed size
    at = data.find(b"PK\x01\x02")
    while at != -1:
        n = int.from_bytes(data[at + 28: at + 30], "little")
        if bytes(data[at + 46: at + 46 + n]) == b"run.parquet":
            data[at + 24: at + 28] = small  # central directory: uncompressed size
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def symlink_zip_entries(bundle: Path):
    info = zipfile.ZipInfo("passwd.parquet")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return good_entries(bundle) + [(info, b"/etc/passwd")]


def invalid_utf8(bundle: Path, tmp: Path) -> Path:
    """run.parquet whose host strings are not UTF-8 (written as binary, labelled string)."""
    table = pq.read_table(bundle / "run.parquet")
    bad = pa.array([b"pi-\xc0\xaf"] * table.num_rows, pa.large_binary()).view(pa.large_string())
    table = table.set_column(table.schema.get_field_index("host"), "host", bad)
    pq.write_table(table, bundle / "run.parquet")
    refresh(bundle, "run.parquet")
    return bundle


def not_a_zip(bundle: Path, tmp: Path) -> Path:
    (tmp / "bundle.zip").write_bytes(b"PK\x03\x04 not really a zip")
    return tmp / "bundle.zip"


def with_symlink(bundle: Path, tmp: Path) -> Path:
    (bundle / "kld.parquet").symlink_to("/etc/passwd")
    return bundle


def empty_folder(bundle: Path, tmp: Path) -> Path:
    path = tmp / "empty"
    path.mkdir()
    return path


def drop(name: str):
    def mutate(bundle: Path, tmp: Path) -> Path:
        (bundle / name).unlink()
        return bundle

    return mutate


def set_row(column: str, row: int, value, dtype=None):
    def change(df: pl.DataFrame) -> pl.DataFrame:
        values = df[column].to_list()
        values[row] = value
        return df.with_columns(pl.Series(column, values, dtype=dtype or df.schema[column]))

    return change


def files_entry(manifest: dict, name: str) -> dict:
    return next(f for f in manifest["files"] if f["path"] == name)


def ingest_good_first(bundle: Path, lake: Lake) -> None:
    ingest(bundle, lake)


def lab_run_a(bundle: Path, lake: Lake) -> None:
    lake.record("run", {"model": [MODEL], "config_id": [RUNS["run-a"]], "run_id": ["run-a"], "status": ["started"],
                        "repeat": [0], "file_sha256": [None], "power_source": ["none"], "host": ["lab"],
                        "provenance_json": ["{}"], "message": [None]})


def lab_other_map(bundle: Path, lake: Lake) -> None:
    lake.append(batch("quant_config", 1, model=MODEL, config_id="uniform_q4km"))


def answers_changed(bundle: Path, tmp: Path) -> Path:
    return edit("benchmark_answer", set_row("subject", 0, "virology"))(bundle, tmp)


@dataclass
class Case:
    id: str
    mutate: Callable[[Path, Path], Path]
    expected: str
    limits: Limits = DEFAULT_LIMITS
    prepare: Callable[[Path, Lake], None] | None = None


NAN, INF = float("nan"), float("inf")
PS = "power_sample"

CASES = [
    # strict schemas
    Case("dtype_float32", edit(PS, lambda d: d.with_columns(pl.col("power_w").cast(pl.Float32))),
         "power_sample.parquet, column power_w: dtype Float32, expected Float64"),
    Case("dtype_int64", edit("run", lambda d: d.with_columns(pl.col("repeat").cast(pl.Int64))),
         "run.parquet, column repeat: dtype Int64, expected Int32"),
    Case("missing_column", edit("perplexity", lambda d: d.drop("ppl_stderr")), "missing column 'ppl_stderr'"),
    Case("extra_column", edit("phase", lambda d: d.with_columns(notes=pl.lit("hi"))), "unknown column 'notes'"),
    Case("schema_value", edit("thermal_sample", set_row("temperature_c", 2, 500.0)),
         "column temperature_c: failed less_than_or_equal_to(150)"),
    Case("schema_version", edit("perplexity", lambda d: d.with_columns(schema_version=pl.lit(3, pl.Int32))),
         "schema_version is newer than the current 2 of perplexity"),
    Case("wrong_event_type", edit("throughput", lambda d: d.with_columns(event_type=pl.lit("kld"))),
         "event_type differs from the file's type 'throughput'"),
    # physics
    Case("nan_power", edit(PS, set_row("power_w", 3, NAN)), "row 3, value nan: power is not finite"),
    Case("inf_power", edit(PS, set_row("power_w", 4, INF)), "row 4, value inf: power is not finite"),
    Case("negative_power", edit(PS, set_row("power_w", 5, -1.5)), "row 5, value -1.5: negative power"),
    Case("power_above_node_range", edit(PS, set_row("power_w", 6, 75.0)),
         "value 75.0: power above the node's stated power_max_w"),
    Case("timestamps_backwards", edit(PS, set_row("host_time_ns", 10, T0)), "host_time_ns goes backwards"),
    Case("thermal_backwards", edit("thermal_sample", set_row("host_time_ns", 5, T0 - 1)),
         "thermal_sample.parquet, column host_time_ns, row 5"),
    Case("negative_energy", edit(PS, set_row("energy_counter_j", 7, -3.0)), "energy must be finite and non-negative"),
    Case("zero_tokens", edit("phase", set_row("tokens", 1, 0)), "tokens must be positive"),
    Case("answer_twice", edit("benchmark_answer", set_row("question_id", 1, "q0")),
         "question answered more than once in one run"),
    Case("gold_beyond_choices", edit("benchmark_answer", lambda d: set_row("choice_scores", 1, [-1.0])(d)),
         "gold or predicted answer index beyond the choices scored"),
    Case("recorded_in_future", edit("run", set_row("recorded_at_ns", 0, 2**62)), "recorded in the future"),
    # identity
    Case("duplicate_id_in_file", edit("run", lambda d: pl.concat([d.head(1), d])), "duplicate event_id within the file"),
    Case("origin_lab", edit("benchmark_answer", lambda d: d.with_columns(origin=pl.lit("lab"))), "claims origin 'lab'"),
    Case("origin_other_submitter", edit("perplexity", lambda d: d.with_columns(origin=pl.lit("community/mallory"))),
         "claims an origin other than 'community/alice'"),
    Case("id_not_content_hash", edit("perplexity", set_row("ppl", 0, 99.0), rehash=False),
         "event_id does not equal the sha256 of the event's content"),
    Case("submitter_path_traversal", patch(lambda m: m["submitter"].update(id="../../etc")),
         "submitter id contains a path separator"),
    Case("submitter_dotdot", patch(lambda m: m["submitter"].update(id="a..b")), "submitter id contains '..'"),
    Case("submitter_oversized", patch(lambda m: m["submitter"].update(id="a" * 65)), "is 65 characters, longer than 64"),
    Case("submitter_uppercase", patch(lambda m: m["submitter"].update(id="Alice")), "is not a lowercase slug"),
    # files and manifest
    Case("hash_mismatch", patch(lambda m: files_entry(m, "run.parquet").update(sha256="0" * 64)), "run.parquet: sha256 mismatch"),
    Case("byte_count_mismatch", patch(lambda m: files_entry(m, "phase.parquet").update(bytes=1)),
         "bytes but manifest.json says 1"),
    Case("row_count_mismatch", patch(lambda m: files_entry(m, "run.parquet").update(rows=5)),
         "has 4 rows but manifest.json says 5"),
    Case("file_not_in_manifest", raw_file("notes.txt", b"hello", update_manifest=False),
         "notes.txt: not listed in manifest.json files"),
    Case("listed_file_missing", drop("perplexity.parquet"),
         "perplexity.parquet: listed in manifest.json but missing from the bundle"),
    Case("truncated_parquet", raw_file("phase.parquet", lambda b: b[: len(b) // 2]), "truncated Parquet file"),
    Case("not_parquet", raw_file("run.parquet", b"run_id,status\nrun-a,finished\n"), "not a Parquet file (no 'PAR1' magic"),
    Case("corrupt_parquet_footer", raw_file("run.parquet", lambda b: b[:4] + b"\x00" * (len(b) - 8) + b[-4:]),
         "run.parquet: not a readable Parquet file"),
    Case("invalid_utf8_string", invalid_utf8, "run.parquet: cannot read the data: ArrowInvalid"),
    Case("manifest_not_json", raw_file("manifest.json", b"{'files': oops", update_manifest=False), "manifest.json is not JSON"),
    Case("manifest_not_utf8", raw_file("manifest.json", b"\xff\xfe{}", update_manifest=False), "manifest.json is not UTF-8"),
    Case("manifest_deeply_nested", raw_file("manifest.json", b"[" * 200_000 + b"]" * 200_000, update_manifest=False),
         "nested too deeply"),
    Case("manifest_duplicate_key",
         raw_file("manifest.json", lambda b: b.replace(b'"licence"', b'"licence": "CC0-1.0", "licence"', 1),
                                            update_manifest=False), "key 'licence' appears twice"),
    Case("manifest_nan", raw_file("manifest.json", lambda b: b.replace(b'"power_max_w": 50.0', b'"power_max_w": NaN', 1),
                                  update_manifest=False), "non-standard JSON constant NaN"),
    Case("manifest_missing_field", patch(lambda m: m.pop("licence")), "'licence' is a required property"),
    Case("manifest_bad_licence", patch(lambda m: m.update(licence="all rights reserved")),
         "field licence: 'all rights reserved' is not one of"),
    Case("manifest_unknown_field", patch(lambda m: m.update(comment="hi")), "Additional properties are not allowed ('comment'"),
    Case("manifest_file_misnamed", patch(lambda m: files_entry(m, "run.parquet").update(event_type="phase")),
         "file 'run.parquet' must be named phase.parquet"),
    Case("manifest_power_range_inverted", patch(lambda m: m["hardware"]["nodes"][0].update(power_min_w=60.0)),
         "node 'node0': power_min_w 60.0 > power_max_w 50.0"),
    Case("manifest_missing", drop("manifest.json"), "manifest.json is missing"),
    Case("empty_bundle", empty_folder, "empty bundle"),
    # references
    Case("window_run_missing", edit("phase", set_row("run_id", 0, "ghost")), "run 'ghost' has no run event in the bundle"),
    Case("run_never_finished", edit("run", lambda d: d.filter(pl.col("status") != "finished")), "run never finished"),
    Case("benchmark_window_missing", edit("phase", lambda d: d.filter(pl.col("phase") != "mmlu")),
         "no 'mmlu' window (phase event) in run 'run-a'"),
    Case("unknown_question", edit("benchmark_answer", set_row("question_id", 2, "q999")),
         "question_id is not in its recorded question set"),
    Case("unrecorded_question_set", edit("benchmark_answer", lambda d: d.with_columns(question_set_sha256=pl.lit(sha("other")))),
         "question set not recorded in manifest.json question_sets"),
    Case("map_not_matching_inventory", edit("tensor_inventory", set_row("requested_type", 2, "q2_K")),
         "requested_type does not match map 'uniform_q4km'"),
    Case("map_not_parsing", edit("quant_config", set_row("map_json", 0, '{"config_id": "uniform_q4km", "layer_groups": 5}')),
         "map_json does not parse"),
    Case("map_json_not_json", edit("quant_config", set_row("map_json", 0, "{not json")), "map_json is not JSON"),
    Case("map_json_duplicate_key", edit("quant_config", set_row("map_json", 0, '{"config_id": "a", "config_id": "b"}')),
         "appears twice in one object"),
    Case("node_not_in_hardware", edit(PS, set_row("node", 0, "node9")),
         "value node9: node is not in the manifest's hardware nodes"),
    Case("meter_type_mismatch", edit(PS, lambda d: d.with_columns(power_source=pl.lit("epi-meter"))),
         "power_source differs from the manifest's meter type 'simulated'"),
    Case("base_model_mismatch", patch(lambda m: m["base_model"].update(sha256=sha("another base"))),
         "base_sha256 is not the manifest's base model sha256"),
    Case("run_without_config", edit("quant_config", lambda d: d.filter(pl.col("config_id") != "uniform_q8")),
         "run 'run-b': its configuration 'uniform_q8' has no quant_config event"),
    # limits
    Case("huge_row_group", lambda b, t: b, "tensor_inventory.parquet: row group 0 has 544 rows, more than the limit 300",
         Limits(max_row_group_rows=300)),
    Case("too_many_rows", lambda b, t: b, "more than the limit 100 per file", Limits(max_rows_per_file=100)),
    Case("string_too_long", edit("run", set_row("provenance_json", 0, '{"x":"' + "y" * 70_000 + '"}')),
         "column provenance_json: string longer than 65536 bytes"),
    Case("too_many_files", lambda b, t: b, "10 files, more than the limit 3", Limits(max_files=3)),
    Case("total_bytes", lambda b, t: b, "bytes in all, more than the limit 20000", Limits(max_total_bytes=20_000)),
    # zips and folders
    Case("zip_entry_outside_root", zipped(lambda b: good_entries(b) + [("../evil.parquet", b"x")]),
         "../evil.parquet: entry lies outside the bundle root"),
    Case("zip_absolute_path", zipped(lambda b: good_entries(b) + [("/etc/cron.d/evil", b"x")]),
         "/etc/cron.d/evil: absolute path"),
    Case("zip_backslash", zipped(lambda b: good_entries(b) + [("..\\evil.parquet", b"x")]), "backslash in entry name"),
    Case("zip_symlink", zipped(symlink_zip_entries), "passwd.parquet: symlink entry"),
    Case("zip_too_many_entries", zipped(lambda b: good_entries(b) + [(f"f{i}.txt", b"") for i in range(60)]),
         "the zip has 71 entries, more than the limit 64"),
    Case("zip_bomb", zipped(lambda b: good_entries(b) + [("bomb.parquet", b"\0" * (30 << 20))]), "a zip bomb"),
    Case("zip_declared_size_over_limit", zipped(good_entries), "total uncompressed size", Limits(max_total_bytes=50_000)),
    Case("zip_size_lies", lying_zip, "run.parquet: corrupt zip entry"),
    Case("zip_nested_path", zipped(lambda b: good_entries(b) + [("a/b/c.parquet", b"x")]), "a/b/c.parquet: nested path"),
    Case("zip_duplicate_entry", zipped(lambda b: good_entries(b) + [("run.parquet", b"PAR1")]),
         "run.parquet: entry appears twice"),
    Case("not_a_zip", not_a_zip, "bundle.zip: not a zip file"),
    Case("folder_symlink", with_symlink, "kld.parquet: is a symlink"),
    # against the lake
    Case("duplicate_ids_across_bundles", answers_changed,
         "run_id 'run-a' is already in the lake with 1 events not in this bundle",
         prepare=ingest_good_first),
    Case("run_id_of_a_lab_run", lambda b, t: b, "(origin lab)", prepare=lab_run_a),
    Case("config_with_another_map", lambda b, t: b,
         "config 'uniform_q4km' of 'smollm2-135m' is already in the lake with a different map",
         prepare=lab_other_map),
]


def test_there_are_at_least_30_distinct_hostile_bundles():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES) and len({c.expected for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_bundle_is_rejected_and_lake_unchanged(case, good_bundle, lab_lake, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    if case.prepare:
        case.prepare(bundle, lab_lake)
    path = case.mutate(bundle, tmp_path)
    before = snapshot(lab_lake.root)
    quarantine = tmp_path / "quarantine"
    with pytest.raises(BundleRejected) as info:
        ingest(path, lab_lake, limits=case.limits, quarantine_dir=quarantine)
    report = info.value.report
    assert case.expected in report.text(), report.text()
    assert snapshot(lab_lake.root) == before
    kept = info.value.quarantined_to
    assert kept is not None and kept.parent == quarantine
    saved = json.loads((kept / "report.json").read_text())
    assert saved["accepted"] is False and len(saved["problems"]) == len(report.problems)


# ------------------------------------------------------------------ accepted bundles


def test_submit_bundle_ingests_into_an_empty_lake_as_community_data(good_bundle, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    result = ingest(good_bundle, lake)
    assert result.status == "ingested" and result.origin == "community/alice"
    runs = lake.read("run")
    assert set(runs["run_id"]) == set(RUNS) and set(runs["origin"]) == {"community/alice"}
    for t in ("quant_config", "tensor_inventory", "phase", "power_sample", "benchmark_answer", "throughput"):
        df = lake.read(t)
        assert df.height and set(df["origin"]) == {"community/alice"}, t
    assert lake.read("benchmark_answer", run_id="run-a").height == 20
    assert lake.verify().ok
    con = sql.connect(lake)
    rows = con.sql("SELECT origin, count(DISTINCT run_id) FROM run GROUP BY ALL").fetchall()
    assert rows == [("community/alice", 2)]
    assert con.sql("SELECT count(*) FROM power_sample WHERE origin = 'community/alice'").fetchall() == [(160,)]
    # twice: a no-op, the lake byte-identical
    before = snapshot(lake.root)
    again = ingest(good_bundle, lake)
    assert again.status == "already-ingested" and again.rows_written == {}
    assert snapshot(lake.root) == before


def test_community_events_sit_beside_lab_events_and_never_take_their_ids(source_lake, good_bundle, tmp_path):
    lake = Lake(tmp_path / "lake")
    shutil.copytree(source_lake.root, lake.root)
    # same runs as the lab's own: the lab run ids collide, so it is rejected
    with pytest.raises(BundleRejected, match="already in the lake"):
        ingest(good_bundle, lake)
    lab_ids = set(source_lake.read("quant_config")["event_id"])
    bundle_ids = set(pl.read_parquet(good_bundle / "quant_config.parquet")["event_id"])
    assert not lab_ids & bundle_ids


def test_zip_bundle_with_a_top_folder_ingests(good_bundle, tmp_path):
    path = zipped(lambda b: good_entries(b, "good/"))(good_bundle, tmp_path)
    lake = Lake(tmp_path / "lake")
    assert ingest(path, lake).status == "ingested"  # an absent lake is created on acceptance
    assert set(lake.read("run")["origin"]) == {"community/alice"}


def test_interrupted_ingest_is_completed(good_bundle, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    checked = validate_bundle(good_bundle, lake)
    for t in ("quant_config", "run", "power_sample"):
        lake.append(checked.frames[t])
    result = ingest(good_bundle, lake)
    assert result.status == "ingested"
    assert "run" not in result.rows_written and result.rows_written["phase"] == 8
    assert lake.read("power_sample").height == 160 and lake.verify().ok


def test_a_second_bundle_adds_a_new_run_of_a_known_config(source_lake, good_bundle, tmp_path):
    shutil.copytree(source_lake.root, tmp_path / "source")
    source = Lake(tmp_path / "source")
    record_run(source, "run-c", "uniform_q4km", T0 + 500 * 10**9)
    second = build_bundle(source, ["run-c"], tmp_path / "second.zip", submitter=SUBMITTER, contact="a@b.c")
    lake = Lake(tmp_path / "lake")
    ingest(good_bundle, lake)
    result = ingest(second, lake)
    assert result.status == "ingested" and "quant_config" not in result.rows_written
    assert lake.read("run").filter(pl.col("run_id") == "run-c").height == 2


def test_report_lists_every_reason(good_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    edit(PS, lambda d: set_row("power_w", 1, NAN)(set_row("power_w", 2, -4.0)(d)))(bundle, tmp_path)
    edit("benchmark_answer", lambda d: d.with_columns(origin=pl.lit("lab")))(bundle, tmp_path)
    with pytest.raises(BundleRejected) as info:
        validate_bundle(bundle)
    problems = info.value.report.problems
    found = {(p.file, p.column, p.row, p.detail.split(" (rows")[0]) for p in problems}
    assert ("power_sample.parquet", "power_w", 1, "power is not finite") in found
    assert ("power_sample.parquet", "power_w", 2, "negative power") in found
    assert ("benchmark_answer.parquet", "origin", 0, "claims origin 'lab'; community events cannot be lab data") in found
    assert "rejected: " in str(info.value)


def test_submit_refuses_bad_input(source_lake, tmp_path):
    with pytest.raises(CommunityError, match="path separator"):
        build_bundle(source_lake, ["run-a"], tmp_path / "b", submitter="../x", contact="a@b.c")
    with pytest.raises(CommunityError, match="no run 'nope'"):
        build_bundle(source_lake, ["nope"], tmp_path / "b", submitter="bob", contact="a@b.c")
    (tmp_path / "exists").mkdir()
    with pytest.raises(CommunityError, match="exists"):
        build_bundle(source_lake, ["run-a"], tmp_path / "exists", submitter="bob", contact="a@b.c")


def test_quarantine_must_be_outside_the_lake(good_bundle, lab_lake):
    with pytest.raises(CommunityError, match="inside the lake"):
        ingest(good_bundle, lab_lake, quarantine_dir=Path(lab_lake.root) / "q")


def test_drop_folder_processes_each_bundle_once(good_bundle, tmp_path):
    drop_dir, quarantine, state = tmp_path / "drop", tmp_path / "quarantine", tmp_path / "state" / "processed.jsonl"
    drop_dir.mkdir()
    zipped(good_entries, "alice.zip")(good_bundle, drop_dir)
    bad = drop_dir / "mallory"
    shutil.copytree(good_bundle, bad)
    edit("benchmark_answer", lambda d: d.with_columns(origin=pl.lit("lab")))(bad, tmp_path)
    (drop_dir / ".upload.partial").write_bytes(b"in progress")
    lake = Lake(tmp_path / "lake")
    outcomes = ingest_drop_folder(drop_dir, lake, quarantine, state)
    assert [(o.bundle, o.status) for o in outcomes] == [("alice.zip", "ingested"), ("mallory", "rejected")]
    assert outcomes[1].quarantined_to and Path(outcomes[1].quarantined_to, "report.json").is_file()
    assert len(state.read_text().splitlines()) == 2
    before = snapshot(lake.root)
    assert ingest_drop_folder(drop_dir, lake, quarantine, state) == []
    assert snapshot(lake.root) == before


# ------------------------------------------------------------------ the commands


def community_app() -> typer.Typer:
    """The two commands registered as mqepi.cli registers them."""
    app = typer.Typer()
    app.callback()(cli.root)
    app.add_typer(cli_community.app)
    return app


def test_submit_and_ingest_commands(source_lake, tmp_path):
    runner, app = CliRunner(), community_app()
    out = tmp_path / "mine.zip"
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps({"nodes": [{"name": f"node{i}", "description": "Raspberry Pi 5 8GB", "power_min_w": 1.0,
                                         "power_max_w": 15.0} for i in (0, 1)]}))
    result = runner.invoke(app, ["--lake", source_lake.root, "submit", "--runs", "run-a,run-b", "--out", str(out),
                                 "--submitter", "bob", "--contact", "bob@example.org", "--hardware", str(hw)])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["hardware"]["nodes"][0]["description"] == "Raspberry Pi 5 8GB"
    target = tmp_path / "target"
    result = runner.invoke(app, ["--lake", str(target), "ingest", str(out), "--dry-run"])
    assert result.exit_code == 0 and "valid" in result.stdout and not target.exists()
    result = runner.invoke(app, ["--lake", str(target), "ingest", str(out)])
    assert result.exit_code == 0 and "community/bob" in result.stdout, result.output
    result = runner.invoke(app, ["--lake", str(target), "ingest", str(out)])
    assert result.exit_code == 0 and "already ingested" in result.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("[]")
    result = runner.invoke(app, ["--lake", str(target), "ingest", str(bad), "--quarantine", str(tmp_path / "q")])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "must be a JSON object" in result.stderr and "quarantined to" in result.stderr
    result = runner.invoke(app, ["--lake", source_lake.root, "submit", "--runs", "run-a", "--out", str(tmp_path / "x"),
                                 "--submitter", "Bad/Id", "--contact", "c@d.e"])
    assert result.exit_code == 1 and "path separator" in result.stderr
    # bundle text that looks like rich markup is printed as it is, not interpreted
    (bad / "manifest.json").write_text(json.dumps({"submitter": {"id": "[/x][bold]", "contact": "x"}}))
    result = runner.invoke(app, ["--lake", str(target), "ingest", str(bad)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "value [/x][bold]: submitter id contains a path separator" in result.stderr


def test_commands_have_docstrings_and_docs_entries():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "commands.md").read_text()
    for name, func in (("submit", submit_command), ("ingest", ingest_command)):
        assert func.__doc__ and func.__doc__.strip()
        assert f"### `mqepi {name}`" in docs
    guide = (Path(__file__).resolve().parent.parent / "docs" / "community.md").read_text()
    for case in ("manifest.json", "quarantine", "community/<submitter>", "Limits"):
        assert case in guide

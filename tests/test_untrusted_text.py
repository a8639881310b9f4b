"""Untrusted text: what a bundle, a file or a tool says is printed as text (no rich markup,
no terminal control), identifiers are checked whole at ingest, maps are parsed strictly, and
a failed submit leaves nothing behind. Everything runs the real CLI on real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from factories import batch
from test_community import RUNS, fill
from typer.testing import CliRunner

from mqepi.cli import app
from mqepi.cli._common import plain
from mqepi.community.manifest import parse_manifest, submitter_problems
from mqepi.community.problems import BundleReport
from mqepi.community.submit import build_bundle
from mqepi.errors import EventValidationError
from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.quant import maps
from mqepi.schemas.events import is_name, is_slug

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
#: What a hostile value does on a terminal: clear the screen, set the title, a C1 CSI, DEL.
HOSTILE = "[/x]\x1b[2J\x1b]0;pwned\x07\x9b\x7f"
HOSTILE_SHOWN = "[/x]\\x1b[2J\\x1b]0;pwned\\x07\\x9b\\x7f"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any control character but newline


def sql_literal(text: str) -> str:
    """``text`` as a DuckDB expression, control characters through chr()."""
    return " || ".join(f"chr({ord(c)})" if RAW_CONTROL.match(c) else f"'{c}'" for c in text)


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def source_lake(tmp_path_factory) -> Lake:
    """A lab lake with two finished runs (the community tests' lake)."""
    return fill(Lake(tmp_path_factory.mktemp("untrusted") / "lake"))


# ------------------------------------------------------------------ A. printing


@pytest.mark.parametrize("code", [*range(0x20), *range(0x7f, 0xa0), 0x200e, 0x202e, 0x2028, 0x2066])
def test_plain_makes_every_control_character_visible(code):
    shown = plain(f"a{chr(code)}b")
    assert shown == (f"a\\x{code:02x}b" if code < 0x100 else f"a\\u{code:04x}b")
    assert plain("a\nb\tc", keep="\n") == "a\nb\\x09c"
    assert plain("[/x] é ü 中") == "[/x] é ü 中"


def test_sql_table_prints_markup_and_controls_as_text(lake):
    query = f"SELECT '[/x]' AS host, {sql_literal(HOSTILE[4:])} AS t, 1 AS \"[/y]\""
    result = cli("--lake", lake.root, "sql", query)
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output and "[/y]" in result.output
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\x9b\\x7f" in result.output
    assert not RAW_CONTROL.search(result.output)


def test_sql_over_a_lake_holding_a_hostile_host_prints_it_visibly(source_lake, tmp_path):
    """A value written before the identifier rules (or by any other writer) reaches the views."""
    root = tmp_path / "lake"
    shutil.copytree(source_lake.root, root)
    path = Lake(root).files("run", run_id="run-a")[0]
    pl.read_parquet(path).with_columns(host=pl.lit(HOSTILE)).write_parquet(path)
    result = cli("--lake", root, "sql", "SELECT DISTINCT host FROM run ORDER BY host")
    assert result.exit_code == 0, result.output
    assert HOSTILE_SHOWN in result.output and not RAW_CONTROL.search(result.output)
    verify = cli("--lake", root, "lake", "verify")
    assert verify.exit_code == 1 and "host" in verify.output
    assert not RAW_CONTROL.search(verify.output)


def test_error_edge_prints_untrusted_text_visibly(lake, tmp_path):
    result = cli("--lake", lake.root, "sql", f"SELECT * FROM \"{HOSTILE}\"")
    assert result.exit_code == 1
    assert "[/x]" in result.stderr and "\\x1b[2J" in result.stderr and not RAW_CONTROL.search(result.stderr)
    bad = tmp_path / "m\x1b[2J[b].json"
    bad.write_text("{")
    result = cli("maps", "validate", bad)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "m\\x1b[2J[b].json: not JSON" in result.stderr
    assert not RAW_CONTROL.search(result.stderr)


def run_on_terminal(args: list[str]) -> bytes:
    """Run ``python -m mqepi ARGS`` with stdout on a pseudo-terminal; what it printed there."""
    return read_terminal([sys.executable, "-m", "mqepi", *args])


def read_terminal(argv: list[str], env: dict | None = None, timeout: float = 120) -> bytes:
    """Run ``argv`` with stdout on a pseudo-terminal; what it printed there (it must exit 0)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=env, cwd=REPO)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=timeout) == 0, proc.stderr.read()
    return b"".join(chunks)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_csv_and_json_show_controls_visibly_on_a_terminal_and_exactly_in_a_pipe(lake, fmt):
    args = ["--lake", str(lake.root), "sql", f"SELECT {sql_literal(HOSTILE)} AS t", "-f", fmt]
    shown = run_on_terminal(args).decode()
    escape = "\\x1b" if fmt == "csv" else "\\u001b"  # JSON escapes C0 itself; DEL and C1 it leaves raw
    assert f"{escape}[2J" in shown and "\\x9b\\x7f" in shown and not RAW_CONTROL.search(shown.replace("\r\n", "")), shown
    piped = subprocess.run([sys.executable, "-m", "mqepi", *args], capture_output=True, cwd=REPO, check=True).stdout
    data = pl.read_csv(io.BytesIO(piped)) if fmt == "csv" else pl.read_json(io.BytesIO(piped))
    assert data["t"].to_list() == [HOSTILE]


# ------------------------------------------------------------------ A. identifiers at ingest


def _set(df: pl.DataFrame, column: str, value) -> pl.DataFrame:
    return df.with_columns(pl.Series(column, [value] * df.height, dtype=df.schema[column]))


ID_COLUMNS = [("run", "model"), ("run", "config_id"), ("run", "run_id"), ("run", "host"), ("run", "origin"),
              ("quantization", "host"), ("phase", "phase"), ("phase", "node"), ("power_sample", "meter_id"),
              ("power_sample", "node"), ("thermal_sample", "node")]
LABEL_COLUMNS = [("tensor_inventory", "tensor"), ("tensor_inventory", "group"), ("thermal_sample", "sensor"),
                 ("benchmark_answer", "question_id"), ("benchmark_answer", "subject"), ("run", "producer"),
                 ("quantization", "llama_cpp_commit")]


@pytest.mark.parametrize("event_type,column", ID_COLUMNS)
@pytest.mark.parametrize("value", ["c1\n", "a\x1b[2J", "[/x]", "a b", "../x", "a/b", "a\x00", "é"])
def test_identifier_columns_refuse_anything_outside_the_id_charset(event_type, column, value):
    with pytest.raises(EventValidationError) as info:
        events.validate(_set(batch(event_type, 2), column, value))
    assert column in str(info.value)


@pytest.mark.parametrize("event_type,column", LABEL_COLUMNS)
@pytest.mark.parametrize("value", ["q1\n", "a\x1b[2J", "\x07", "a\x9bb", "a\x7f"])
def test_label_columns_refuse_control_characters(event_type, column, value):
    with pytest.raises(EventValidationError) as info:
        events.validate(_set(batch(event_type, 2), column, value))
    assert column in str(info.value)


@pytest.mark.parametrize("event_type,column,value", [
    ("run", "host", "pi0:192.168.1.20"), ("run", "host", "head:::1"), ("quantization", "host", "quant-host"),
    ("power_sample", "meter_id", "nvml-gpu0"), ("thermal_sample", "sensor", "INT3400 Thermal"),
    ("benchmark_answer", "question_id", "mmlu/anatomy/12"), ("run", "message", "line 1\nline 2"),
])
def test_legitimate_values_still_validate(event_type, column, value):
    events.validate(_set(batch(event_type, 2), column, value), check_ids=False)


def test_python_side_id_checks_match_whole_strings():
    assert is_slug("c1") and not is_slug("c1\n") and not is_slug(None)
    assert is_name("pi0:10.0.0.2") and not is_name("pi0\n")
    assert maps.SLUG.match("c1") and not maps.SLUG.match("c1\n")
    assert maps.TensorInfo("blk.3.attn_q.weight", (8, 8)).layer == 3
    assert maps.TensorInfo("blk.3.attn_q.weight\n", (8, 8)).layer is None


def rewrite(bundle: Path, event_type: str, column: str, value: str) -> None:
    """Set ``column`` of a bundle's ``event_type`` file to ``value`` (ids and manifest updated)."""
    name = f"{event_type}.parquet"
    df = pl.read_parquet(bundle / name).with_columns(pl.lit(value).alias(column))
    df.with_columns(events.content_ids(df)).write_parquet(bundle / name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            entry["rows"] = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_ingest_rejects_a_hostile_host_and_prints_the_problem_as_text(source_lake, tmp_path):
    bundle = build_bundle(source_lake, list(RUNS), tmp_path / "bundle", submitter="alice", contact="a@example.org")
    rewrite(bundle, "run", "host", HOSTILE)
    target = Lake(tmp_path / "target")
    target.init()
    result = cli("--lake", target.root, "ingest", bundle)
    assert result.exit_code == 1
    assert "host" in result.output and "[/x]" in result.output
    assert not RAW_CONTROL.search(result.output) and not RAW_CONTROL.search(result.stderr)
    assert target.read("run").height == 0


# ------------------------------------------------------------------ B. maps


def good_map() -> dict:
    return json.loads((maps.maps_dir("smollm2-135m") / "uniform_q8.json").read_text())


def with_layer(value) -> str:
    data = good_map()
    data["layer_groups"][0]["layers"][0] = "@LAYER@"
    return json.dumps(data).replace('"@LAYER@"', value)


BAD_MAPS = {
    "huge_layer": (lambda: with_layer("9" * 5000), "field layer_groups/0/layers/0: layer 999999999999... (5000 digits)"),
    "far_layer": (lambda: with_layer("5000"), "field layer_groups/0/layers/0: layer 5000 is outside 0-1023"),
    "negative_layer": (lambda: with_layer("-1"), "field layer_groups/0/layers/0: layer -1 is outside 0-1023"),
    "float_layer": (lambda: with_layer("0.0"), "field layer_groups/0/layers/0: 0.0 is not an integer layer number"),
    "bool_layer": (lambda: with_layer("true"), "field layer_groups/0/layers/0: True is not an integer layer number"),
    "inf_layer": (lambda: with_layer("1e400"), "field layer_groups/0/layers/0: inf is not an integer layer number"),
    "nan_layer": (lambda: with_layer("NaN"), "non-standard JSON constant NaN"),
    "huge_id": (lambda: json.dumps(good_map()).replace('"uniform_q8"', "9" * 40),
                "field config_id: 999999999999... (40 digits) is not of type 'string'"),
    "string_layer": (lambda: with_layer('"0"'), "field layer_groups/0/layers/0: '0' is not an integer layer number"),
    "deep_overflow": (lambda: "[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),
    "deep": (lambda: json.dumps({**good_map(), "strategy": json.loads("[" * 900 + "]" * 900)}),
             "nested more than 32 levels deep"),
    "not_utf8": (lambda: json.dumps({**good_map(), "strategy": "@"}).encode().replace(b"@", b"\xe9"),
                 "not UTF-8 text (byte 0xe9 at offset"),
    "duplicate_key": (lambda: json.dumps(good_map())[:-1] + ', "config_id": "other"}',
                      "field 'config_id' appears twice in one object"),
    "newline_id": (lambda: json.dumps({**good_map(), "config_id": "c1\n"}), "field config_id: 'c1\\n' does not match"),
    "newline_model": (lambda: json.dumps({**good_map(), "model": "smollm2-135m\n"}), "field model:"),
    "newline_group": (lambda: json.dumps(good_map()).replace('"early"', '"early\\n"'),
                      "field layer_groups/0/name: 'early\\n' does not match"),
    "oversized": (lambda: json.dumps({**good_map(), "strategy": "x" * (maps.MAX_JSON_BYTES + 1)}),
                  f"more than the {maps.MAX_JSON_BYTES} a map or profile may have"),
    "long_quant": (lambda: json.dumps({**good_map(), "output": "Q" * 100_000}), "field output:"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPS))
def test_maps_validate_refuses_with_one_line_naming_file_field_and_value(case, tmp_path):
    make, expected = BAD_MAPS[case]
    content = make()
    path = tmp_path / f"{case}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = cli("maps", "validate", path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_maps_validate_names_a_folder_and_a_missing_file(tmp_path):
    for path, expected in ((tmp_path, "cannot read the map file: Is a directory"), (tmp_path / "nope.json", "no such map file")):
        result = cli("maps", "validate", path)
        assert result.exit_code == 1 and result.stderr.strip() == f"error: {path}: {expected}"


def test_already_decoded_float_layers_are_refused_and_integer_duplicates_found():
    """A float layer would hash differently from its integer and escape the duplicate check."""
    as_float = good_map()
    as_float["layer_groups"][0]["layers"] = [float(x) for x in as_float["layer_groups"][0]["layers"]]
    with pytest.raises(maps.MapError, match="layers/0: 0.0 is not an integer layer number"):
        maps.parse_map(as_float, "float.json")
    same = maps.parse_map({**good_map(), "config_id": "twin"}, "twin.json")
    assert maps.identical_maps([maps.parse_map(good_map(), "a.json"), same]) == [("uniform_q8", "twin")]


def test_profiles_are_read_strictly(tmp_path):
    profile = json.loads((maps.PROFILES_DIR / "smollm2-135m.json").read_text())
    cases = {
        "dup.json": (json.dumps(profile)[:-1] + ', "n_layers": 3}', "field 'n_layers' appears twice"),
        "float.json": (json.dumps({**profile, "n_layers": 30.0}), "field n_layers: 30.0 is not an integer"),
        "bool.json": (json.dumps({**profile, "n_head": True}), "field n_head: True is not an integer"),
        "shape.json": (json.dumps({**profile, "tensors": [{"name": "t.weight", "shape": [1.5, 2]}]}),
                       "tensor dimension 1.5 is not a positive integer"),
        "id.json": (json.dumps({**profile, "id": "smollm2\n"}), "field id:"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(maps.MapError) as info:
            maps.load_profile(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ") and expected in str(info.value)
    with pytest.raises(maps.MapError, match="no model profile"):
        maps.load_profile("../models/smollm2-135m")


def test_every_quant_map_schema_pattern_refuses_a_trailing_newline():
    schema = json.loads((REPO / "schemas" / "quant_map.schema.json").read_text())
    patterns = re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', json.dumps(schema))
    assert len(patterns) == 3
    for pattern in (json.loads(f'"{p}"') for p in patterns):
        assert re.search(pattern, "a1") and not re.search(pattern, "a1\n"), pattern


# ------------------------------------------------------------------ B. submit


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("out_name", ["bundle", "bundle.zip"])
@pytest.mark.parametrize("args,expected", [
    (["--submitter", "alice\n"], "--submitter 'alice\\n' is not a lowercase slug"),
    (["--submitter", "alice", "--contact", "a@b\x1b[2J"], "--contact: 'a@b\\x1b[2J' holds a control character"),
    (["--submitter", "alice", "--meter-calibration", "x\r\ny"], "--meter-calibration: 'x\\r\\ny' holds a control"),
    (["--submitter", "alice", "--node-max-w", "1"], "does not pass ingest checks"),
])
def test_a_failed_submit_leaves_nothing_at_out(source_lake, tmp_path, out_name, args, expected):
    folder = tmp_path / "out"
    folder.mkdir()
    if "--contact" not in args:
        args = [*args, "--contact", "a@example.org"]
    result = cli("--lake", source_lake.root, "submit", "--runs", "run-a", "--out", folder / out_name, *args)
    assert result.exit_code == 1, result.output
    assert expected in result.stderr and not RAW_CONTROL.search(result.stderr)
    assert leftovers(folder) == []


def test_a_good_submit_renames_its_checked_bundle_into_place(source_lake, tmp_path):
    result = cli("--lake", source_lake.root, "submit", "--runs", "run-a", "--out", tmp_path / "b.zip",
                 "--submitter", "alice", "--contact", "a@example.org")
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path) == ["b.zip"]


@pytest.mark.parametrize("field,value", [("id", "alice\n"), ("id", "alice\n\n"), ("sha256", "a" * 64 + "\n")])
def test_manifest_patterns_match_whole_values(tmp_path, field, value):
    """A manifest value with a trailing newline fails (JSON Schema's pattern is a search, and
    Python's ``$`` matches before a final newline)."""

    source = fill(Lake(tmp_path / "source"))
    bundle = build_bundle(source, list(RUNS)[:1], tmp_path / "b", submitter="alice", contact="a@example.org",
                          meter_calibration="none: simulated meter")
    manifest = json.loads((bundle / "manifest.json").read_text())
    if field == "id":
        manifest["submitter"]["id"] = value
        assert submitter_problems(value)
    else:
        manifest["files"][0]["sha256"] = value
    report = BundleReport("b")
    parse_manifest(json.dumps(manifest).encode(), report)
    assert report.problems and all(field in str(p.column) + p.detail for p in report.problems), report.problems

"""The command line: every command documented, errors as one line, real lake underneath."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import typer.main
from factories import batch
from typer.testing import CliRunner

from mqepi.cli import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
runner = CliRunner()


def all_commands(group, prefix: str = "mqepi"):
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            yield from all_commands(command, path)
        else:
            yield path, command


COMMANDS = list(all_commands(typer.main.get_command(app)))


def test_there_are_commands():
    names = {p for p, _ in COMMANDS}
    assert {"mqepi lake verify", "mqepi lake stats", "mqepi sql", "mqepi demo"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_docstring_help_and_docs_entry(path, command):
    assert command.callback.__doc__ and command.callback.__doc__.strip()
    result = runner.invoke(app, path.split()[1:] + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert f"### `{path}`" in DOCS.read_text()


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "mqepi", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lake" in proc.stdout


def test_sql_formats(lake, tmp_path):
    lake.append(batch("perplexity", 3))
    args = ["--lake", lake.root, "sql"]
    result = runner.invoke(app, args + ["SELECT config_id, ppl FROM perplexity ORDER BY ppl", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert [r["ppl"] for r in json.loads(result.stdout)] == [22.0, 23.0, 24.0]
    out = tmp_path / "p.parquet"
    result = runner.invoke(app, args + ["SELECT * FROM perplexity", "-f", "parquet", "-o", str(out)])
    assert result.exit_code == 0 and pl.read_parquet(out).height == 3
    result = runner.invoke(app, args + ["SELECT ppl FROM perplexity", "-f", "csv"])
    assert result.stdout.splitlines()[0] == "ppl"
    result = runner.invoke(app, args + ["SELECT [1, 2] AS l, {'a': 'x'} AS s, NULL::INT[] AS n", "-f", "csv"])
    assert result.stdout.splitlines() == ["l,s,n", '"[1, 2]","{""a"": ""x""}",']  # nested values as JSON text
    result = runner.invoke(app, args + ["--views"])
    assert "power_sample: event_id VARCHAR" in result.stdout
    result = runner.invoke(app, args + ["SET VARIABLE mqepi_bootstrap = 20; SELECT count(*) AS n FROM config_summary",
                                        "-f", "csv"])
    assert result.exit_code == 0 and "evaluating the live views" in result.stderr and result.stdout.split() == ["n", "0"]
    result = runner.invoke(app, args + ["SELECT * FROM nope"])
    assert result.exit_code == 1 and "error:" in result.stderr and "nope" in result.stderr
    result = runner.invoke(app, args + ["SELECT 1", "-f", "xml"])
    assert result.exit_code == 1 and "xml" in result.stderr


def test_lake_verify_exit_status(lake):
    lake.append(batch("run", 2))
    ok = runner.invoke(app, ["--lake", lake.root, "lake", "verify"])
    assert ok.exit_code == 0 and "ok" in ok.stdout
    Path(lake.root, "run", "junk.bin").write_bytes(b"x")
    bad = runner.invoke(app, ["--lake", lake.root, "lake", "verify"])
    assert bad.exit_code == 1 and "unexpected" in bad.stdout


def test_lake_stats_counts_by_origin(lake):
    lake.append(batch("phase", 2))
    lake.append(batch("phase", 3, origin="community/alice", start=10))
    stats = lake.stats().filter(pl.col("event_type") == "phase")
    assert dict(stats.select("origin", "events").iter_rows()) == {"community/alice": 3, "lab": 2}
    result = runner.invoke(app, ["--lake", lake.root, "lake", "stats"])
    assert result.exit_code == 0 and "community/alice" in result.stdout


def test_lake_env_var_is_honoured(lake, monkeypatch):
    lake.append(batch("kld", 1))
    monkeypatch.setenv("MQEPI_LAKE", lake.root)
    result = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM kld", "-f", "json"])
    assert json.loads(result.stdout) == [{"n": 1}]


def test_evaluate_model_takes_a_profile_id_not_a_gguf_file(tmp_path, monkeypatch):
    """llama.cpp's ``-m model.gguf`` habit: refused in one line naming the option and the value,
    before anything is written."""
    monkeypatch.chdir(tmp_path)
    Path("weights.bin").write_bytes(b"GGUF")
    lake = tmp_path / "lake"
    for value in ("some.gguf", "models/SmolLM2.Q8_0.GGUF", "dir/profile", "weights.bin"):
        result = runner.invoke(app, ["--lake", str(lake), "evaluate", "uniform_q8", "-m", value])
        assert result.exit_code == 1, result.output
        assert result.stderr == (f"error: --model {value!r} looks like a model file: --model takes a model profile id "
                                 "such as smollm2-135m; give the .gguf file as the CONFIG argument: "
                                 "mqepi evaluate path/to/model.gguf --model PROFILE\n")
        assert not lake.exists()  # nothing created, nothing appended
    help_text = re.sub(r"\s+", " ", runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"}).output)
    assert "Not a .gguf file (llama.cpp's -m): that is the CONFIG argument." in help_text


@pytest.mark.slow
def test_demo_runs_every_stage_on_a_subset(tmp_path):
    """The demo's stages end to end on three configurations (the README's main command runs
    all 24 the same way): loopback cluster, calibration, planner, sweep, frontier, report."""
    from mqepi.lake.store import Lake

    root = tmp_path / "demo-lake"
    out = tmp_path / "report"
    result = runner.invoke(app, ["--lake", str(root), "demo", "--configs", "uniform_q8,uniform_q4km,mix_q4_q5",
                                 "--bench", "mmlu=2", "--no-prefect", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "failed" not in result.stdout and "skipped" not in result.stdout
    assert "SIMULATED" in result.stdout and "forecast" in result.stdout and "Pareto frontier" in result.stdout
    lake = Lake(root)
    from mqepi.quant import maps

    committed = len(list(maps.maps_dir("smollm2-135m").glob("*.json")))  # the paper's 24 and any search-* maps
    assert lake.read("quantization")["config_id"].n_unique() == committed
    runs = lake.read("run")
    assert sorted(runs.filter(runs["status"] == "finished")["config_id"]) == ["mix_q4_q5", "uniform_q4km", "uniform_q8"]
    assert set(runs["power_source"]) == {"simulated"}
    html = (out / "report.html").read_text()
    assert "simulated power" in html.lower() and "mix_q4_q5" in html
    for text in (html, (out / "report.md").read_text()):  # no absolute path of this machine (lake, cluster.toml)
        assert str(tmp_path) not in text and not re.search(r"(?<![\w.])/(tmp|root|home|work)/", text)
    assert list((root.parent / "derived" / "snapshots").iterdir())


def test_demo_takes_benchmarks_as_every_command_does(tmp_path):
    """`mqepi demo --bench NAME=N` (the spelling of sweep, plan and evaluate); the old --questions N
    still works, both at once is an error before anything is made."""
    from mqepi.cli.demo import DemoSettings

    assert DemoSettings().sweep_name() == "demo-q10-w0"  # an earlier demo's lake resumes under its name
    assert DemoSettings(bench={"mmlu": 10, "arc_challenge": None}, workers=2).sweep_name() == \
        "demo-mmlu10-arc_challengeall-w2"
    assert DemoSettings(bench={"mmlu": 10, "arc_challenge": None}).spec(None).benchmarks == \
        {"mmlu": 10, "arc_challenge": None}
    root = tmp_path / "lake"
    result = runner.invoke(app, ["--lake", str(root), "demo", "--bench", "mmlu=2", "--questions", "3"])
    assert result.exit_code == 1 and "give --bench or the old --questions, not both" in result.output
    assert not root.exists()
    result = runner.invoke(app, ["--lake", str(root), "demo", "--bench", "mmlu=2,trivia=5"])
    assert result.exit_code == 1 and "unknown benchmark 'trivia'" in result.output and not root.exists()
    help_text = " ".join(runner.invoke(app, ["demo", "--help"]).output.split())
    assert "--bench" in help_text and "[default: mmlu=10]" in help_text and "--questions" not in help_text

"""The command line keeps the conventions: defaults visible in every --help, ``--version``,
plain unwrapped text into a pipe, JSON that ends with a newline, every check before a side
effect, and options given on the command line over a spec file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import pytest
import typer.main
from factories import batch
from typer.testing import CliRunner

from mqepi import __version__
from mqepi.cli import app
from mqepi.cli.sweep import build_spec

runner = CliRunner()
ROOT = typer.main.get_command(app)


def commands(group=ROOT, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


COMMANDS = list(commands())


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_every_default(path, command):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name == "help":
            continue
        stated = re.search(r"\[default: [^\]]+\]", param.help or "")
        if stated:  # a default the help states in words ("[default: ./lake]") is shown, not eaten as markup
            assert flat(stated.group()) in text, (path, param.name)
        elif param.default not in (None, False, (), []) and not param.is_flag and param.show_default is not False:
            shown = param.default if not isinstance(param.default, (list, tuple)) else ", ".join(map(str, param.default))
            assert f"[default: {shown}]" in text or f"default: {shown}" in text, (path, param.name, param.default)
    root = flat(runner.invoke(app, ["--help"], env={"COLUMNS": "100"}).output)
    assert "[default: ./lake]" in root and "MQEPI_LAKE" in root


def test_version_flag_and_command():
    for args in (["--version"], ["version"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and result.output == f"mqepi {__version__}\n"


def test_output_into_a_pipe_is_not_wrapped(tmp_path):
    """Rich wraps at 80 columns when it cannot ask a terminal; into a pipe every line stays whole."""
    long = " ".join(f"word{i}" for i in range(40))
    code = ("from mqepi.cli._common import out, err, say\n"
            f"out.print({long!r}); err.print('[yellow]note[/]: ' + {long!r}); say({long!r})")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.splitlines() == [long, long]
    assert proc.stderr.splitlines() == [f"note: {long}"]


def test_json_output_ends_with_a_newline(lake):
    lake.append(batch("perplexity", 2))
    result = runner.invoke(app, ["--lake", lake.root, "sql", "SELECT config_id FROM perplexity", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and len(json.loads(result.stdout)) == 2
    csv = runner.invoke(app, ["--lake", lake.root, "sql", "SELECT config_id FROM perplexity", "-f", "csv"])
    assert csv.exit_code == 0 and csv.stdout.endswith("\n") and not csv.stdout.endswith("\n\n")


@pytest.mark.parametrize("args,message", [
    (["evaluate", "uniform_q8", "--mmlu", "/nonexistent/mmlu"], "/nonexistent"),
    (["evaluate", "no_such_config"], "no quant map"),
    (["evaluate", "/nonexistent/model.gguf"], "no such model file"),
    (["evaluate", "uniform_q8", "--bench", "mmlu=zero"], "--bench 'mmlu=zero'"),
    (["sweep", "--no-prefect", "--set", "idle_s=abc"], "idle_s = 'abc'"),
    (["plan", "--set", "repeats=two"], "repeats = 'two'"),
    (["search", "--types", "Q9_K", "--no-measure"], "Q9_K"),
], ids=["evaluate-data", "evaluate-config", "evaluate-gguf", "evaluate-bench", "sweep-set", "plan-set", "search-types"])
def test_a_bad_option_is_an_error_before_any_side_effect(tmp_path, args, message):
    lake = tmp_path / "lake"
    result = runner.invoke(app, ["--lake", str(lake), *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not lake.exists()  # nothing created, nothing appended


def test_options_on_the_command_line_override_the_spec_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"repeats": 2, "configs": ["uniform_q8"], "idle_s": 5, "meter": "none"}))
    args = dict(model="smollm2-135m", configs=[], repeats=3, bench=[], cluster=None, meter="simulated", name=None,
                spec_file=spec)
    from_file = build_spec(**args, settings=[], given=set())
    assert (from_file.repeats, from_file.configs, from_file.idle_s, from_file.meter) == (2, ["uniform_q8"], 5, "none")
    both = build_spec(**{**args, "repeats": 4, "bench": ["arc_challenge=7"]}, settings=["idle_s=9"],
                      given={"repeats", "bench", "settings"})
    assert (both.repeats, both.benchmarks, both.idle_s) == (4, {"arc_challenge": 7}, 9)
    assert (both.configs, both.meter) == (["uniform_q8"], "none")  # not given: the file's
    # through the command: the flag's value is the one checked (the file's 2 would be valid)
    result = runner.invoke(app, ["--lake", str(tmp_path / "lake"), "sweep", "--no-prefect", "--spec", str(spec),
                                 "--repeats", "0"])
    assert result.exit_code == 1 and "repeats = 0" in result.output and not (tmp_path / "lake").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"idle_s": "long"}))
    result = runner.invoke(app, ["--lake", str(tmp_path / "lake"), "sweep", "--spec", str(bad)])
    assert result.exit_code == 1 and f"{bad}: idle_s = 'long'" in flat(result.output)


def test_one_spelling_of_benchmarks_and_question_counts():
    for path in (("sweep",), ("plan",), ("evaluate",)):
        command = dict(COMMANDS)[path]
        bench = next(p for p in command.params if p.name == "bench")
        assert "--bench" in bench.opts and "-b" in bench.opts and "NAME[=QUESTIONS|all]" in bench.help
        assert not {"benchmarks", "questions"} & {p.name for p in command.params}


def test_help_paragraphs_are_rewrapped_not_hard_broken():
    """A docstring's line breaks are not the help's: its sentences flow to the width."""
    doc_lines = [line.strip() for line in typer.main.get_command(app).commands["sweep"].callback.__doc__.splitlines()]
    assert doc_lines[1].startswith("stabilise,")  # where the docstring breaks
    result = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    lines = [line.strip() for line in result.output.splitlines()]
    assert "stabilise," in result.output and not any(line.startswith("stabilise,") for line in lines)

"""``mqepi evaluate --output-path DIR --log-samples``: result files in lm-evaluation-harness's
layout, checked field by field and type by type against files written by hand from lm-eval's
documentation (tests/fixtures/lmeval), and against the lake's answers of the same real run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from mqepi.cli import app
from mqepi.lake.store import Lake

FIX = Path(__file__).parent / "fixtures" / "lmeval"


def same_shape(ours, theirs, where: str = "") -> None:
    """Every key of ``theirs`` is in ``ours`` with a value of the same JSON type, recursively
    (lists: every element of ours shaped like theirs' first)."""
    assert type(ours) is type(theirs) or {type(ours), type(theirs)} <= {int, float}, (where, ours, theirs)
    if isinstance(theirs, dict):
        generic = [k for k in theirs if k.startswith(("gen_args_", "arg_"))]
        for key, value in theirs.items():
            if key in generic:
                continue
            assert key in ours, f"{where}.{key} missing"
            same_shape(ours[key], value, f"{where}.{key}")
        for key in ours:  # the numbered argument keys: same pattern, shaped like theirs' first
            if generic and key.startswith(("gen_args_", "arg_")):
                prefix = key.rsplit("_", 1)[0] + "_"
                template = next((theirs[k] for k in theirs if k.startswith(prefix)), None)
                assert template is not None, f"{where}.{key}: lm-eval has no such key"
                same_shape(ours[key], template, f"{where}.{key}")
    elif isinstance(theirs, list) and theirs:
        for i, x in enumerate(ours):
            same_shape(x, theirs[0], f"{where}[{i}]")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    lake, out = root / "lake", root / "out"
    result = CliRunner().invoke(app, [
        "--lake", str(lake), "evaluate", "uniform_q8", "--bench", "mmlu=4", "--no-kld", "--no-throughput",
        "--ppl-context", "128", "--ppl-chunks", "1", "--output-path", str(out), "--log-samples"])
    assert result.exit_code == 0, result.output
    return Lake(lake), out, result.output


def test_result_files_are_laid_out_like_lm_evals(evaluated):
    _, out, output = evaluated
    (folder,) = list(out.iterdir())
    assert folder.name == "smollm2-135m__uniform_q8"
    (results,) = list(folder.glob("results_*.json"))
    (samples,) = list(folder.glob("samples_mmlu_*.jsonl"))
    assert results.name.removeprefix("results_") == samples.name.removeprefix("samples_mmlu_").replace(".jsonl", ".json")
    assert f"wrote {results}" in output
    ours = json.loads(results.read_text())
    theirs = json.loads(next(FIX.glob("results_*.json")).read_text())
    # the task is 'mmlu' here, 'mmlu_astronomy' in the fixture: compare the per-task objects by shape
    rename = {"mmlu_astronomy": "mmlu"}

    def renamed(doc):
        return {k: ({rename.get(t, t): v for t, v in doc[k].items()} if isinstance(doc[k], dict) and k != "config"
                    else doc[k]) for k in doc}

    same_shape(ours, renamed(theirs), "results")
    assert ours["n-samples"]["mmlu"]["effective"] == 4 and ours["n-shot"]["mmlu"] == 5
    assert str(Path.home()) not in results.read_text() and str(out) not in results.read_text()


def test_sample_logs_match_lm_evals_fields_and_types_and_the_lake(evaluated):
    lake, out, _ = evaluated
    (samples,) = list(out.glob("*/samples_mmlu_*.jsonl"))
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    theirs = json.loads((FIX / "samples_mmlu_astronomy.jsonl").read_text().splitlines()[0])
    assert len(lines) == 4 and [x["doc_id"] for x in lines] == [0, 1, 2, 3]
    for line in lines:
        same_shape(line, theirs, "sample")
        args = line["arguments"]
        assert sorted(args) == [f"gen_args_{i}" for i in range(4)]
        assert [args[f"gen_args_{i}"]["arg_1"] for i in range(4)] == [" A", " B", " C", " D"]
        assert len({a["arg_0"] for a in args.values()}) == 1 and args["gen_args_0"]["arg_0"].endswith("Answer:")
        assert line["prompt_hash"] == hashlib.sha256(args["gen_args_0"]["arg_0"].encode()).hexdigest()
        assert line["target_hash"] == hashlib.sha256(line["target"].encode()).hexdigest()
        assert line["doc_hash"] == hashlib.sha256(json.dumps(line["doc"], indent=2, ensure_ascii=False).encode()).hexdigest()
        assert [r[0] for r in line["resps"]] == line["filtered_resps"]
    answers = lake.read("benchmark_answer").sort("recorded_at_ns")
    assert answers.height == 4
    for line, row in zip(lines, answers.iter_rows(named=True)):
        assert line["doc"]["question_id"] == row["question_id"] and line["target"] == str(row["gold"])
        assert [float(r[0]) for r in line["filtered_resps"]] == pytest.approx(row["choice_scores"], abs=0, rel=0)
        assert line["acc"] == float(row["correct"]) and line["acc_norm"] == float(row["correct_norm"])
    accuracy = sum(x["acc"] for x in lines) / 4
    (results,) = list(out.glob("*/results_*.json"))
    assert json.loads(results.read_text())["results"]["mmlu"]["acc,none"] == accuracy
    assert pl.Series([x["acc"] for x in lines]).is_in([0.0, 1.0]).all()


def test_log_samples_without_an_output_path_is_an_error_before_anything(tmp_path):
    result = CliRunner().invoke(app, ["--lake", str(tmp_path / "lake"), "evaluate", "uniform_q8", "--log-samples"])
    assert result.exit_code == 1 and "--log-samples needs --output-path" in result.output
    assert not (tmp_path / "lake").exists()

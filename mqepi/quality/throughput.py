"""Throughput with llama-bench: prompt processing (``pp``) and generation (``tg``).

The two tests run as separate invocations so each has a window of its own (prefill and
decode J/token come from them); a window spans the whole invocation.
"""

from __future__ import annotations

import json
import time

from mqepi import PRODUCER
from mqepi.meter.stream import RunKey
from mqepi.meter.windows import record_window
from mqepi.quality.scoring import ScoringError, thread_args, tool_failed
from mqepi.rig.executor import LocalExecutor, int_arg


def run_throughput(bench_tool, model_path, *, n_prompt: int = 128, n_gen: int = 32, repetitions: int = 3,
                   threads: int | None = None, rpc_nodes: int = 0, extra_args: list[str] = (), lake=None,
                   key: RunKey | None = None, executor=None) -> list[dict]:
    """llama-bench prompt processing (pp) and generation (tg), each its own window."""
    executor = executor or LocalExecutor()
    records = []
    pp, tg, reps = int_arg(n_prompt, "n_prompt", 1), int_arg(n_gen, "n_gen", 1), int_arg(repetitions, "repetitions", 1)
    for test, args in (("pp", ["-p", pp, "-n", "0"]), ("tg", ["-p", "0", "-n", tg])):
        cmd = [str(bench_tool), "-m", str(model_path), *args, "-r", reps, "-o", "jsonl",
               *thread_args(threads), *extra_args]
        record = _bench(executor, cmd, test, repetitions=repetitions, threads=threads, rpc_nodes=rpc_nodes)
        records.append(record)
        if lake is not None and key is not None:
            lake.record("throughput", {**key.columns(1), **{k: [v] for k, v in record.items()
                                                            if k not in ("start_ns", "end_ns", "tokens")}},
                        producer=PRODUCER)
            record_window(lake, key, test, record["start_ns"], record["end_ns"], tokens=record["tokens"])
    return records


def _bench(executor, cmd: list[str], test: str, *, repetitions: int, threads: int | None, rpc_nodes: int) -> dict:
    """One llama-bench invocation: its JSON record, timed by the host's clock."""
    start = time.time_ns()
    result = executor.stream(cmd)
    end = time.time_ns()
    if result.returncode != 0:
        raise tool_failed("llama-bench", result)
    rows = [json.loads(line) for _, line in result.lines if line.lstrip().startswith("{")]
    if len(rows) != 1:
        raise ScoringError(f"llama-bench printed {len(rows)} JSON records for the {test} test, expected 1")
    row = rows[0]
    return {"test": test, "n_prompt": int(row["n_prompt"]), "n_gen": int(row["n_gen"]), "repetitions": repetitions,
            "n_threads": int(row.get("n_threads") or threads or 1), "tokens_per_s": float(row["avg_ts"]),
            "tokens_per_s_stddev": float(row["stddev_ts"]), "rpc_nodes": rpc_nodes,
            "start_ns": start, "end_ns": end, "tokens": repetitions * (int(row["n_prompt"]) + int(row["n_gen"]))}

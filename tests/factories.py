"""Valid example events of every type, for tests and benchmarks (synthetic values)."""

from __future__ import annotations

import hashlib

import polars as pl

from mqepi.lake import events

T0 = 1_764_000_000_000_000_000  # 2025-11-24 UTC, in ns


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows_for(event_type: str, n: int = 3, *, run_id: str = "run-a", model: str = "smollm2-135m",
             config_id: str = "uniform_q4km", start: int = 0) -> dict[str, list]:
    """``n`` rows of ``event_type``'s own columns (plus partition keys)."""
    idx = list(range(start, start + n))
    cfg = {"model": [model] * n, "config_id": [config_id] * n}
    run = {**cfg, "run_id": [run_id] * n}
    if event_type == "quant_config":
        return {**cfg, "map_sha256": [sha(f"map{i}") for i in idx], "map_json": ['{"layer_groups":[]}'] * n,
                "n_layers": [30] * n, "kind": ["uniform"] * n}
    if event_type == "quantization":
        return {**cfg, "map_sha256": [sha(f"map{i}") for i in idx], "base_sha256": [sha("base")] * n,
                "base_ftype": ["Q4_K_M"] * n, "llama_cpp_commit": ["b1234"] * n,
                "file_sha256": [sha(f"f{i}") for i in idx], "effective_map_sha256": [sha(f"e{i}") for i in idx],
                "file_size_bytes": [100_000 + i for i in idx], "bits_per_weight": [4.5 + i / 100 for i in idx],
                "duration_s": [1.25] * n, "host": ["localhost"] * n}
    if event_type == "config_alias":
        return {**cfg, "alias_of": [f"measured{i}" for i in idx], "map_sha256": [sha(f"map{i}") for i in idx],
                "base_sha256": [sha("base")] * n, "effective_map_sha256": [sha(f"e{i}") for i in idx]}
    if event_type == "tensor_inventory":
        return {**cfg, "file_sha256": [sha("f")] * n, "tensor": [f"blk.{i}.attn_v.weight" for i in idx],
                "layer": idx, "group": ["early"] * n, "requested_type": ["q6_K"] * n,
                "effective_type": ["q8_0"] * n, "fallback": [True] * n, "n_elements": [576 * 192] * n,
                "n_bytes": [576 * 192 * 34 // 32] * n}
    if event_type == "run":
        return {**run, "status": ["started"] * n, "repeat": idx, "file_sha256": [None] * n,
                "power_source": ["simulated"] * n, "host": ["localhost"] * n,
                "provenance_json": ['{"mqepi":"0.1.0"}'] * n, "message": [None] * n}
    if event_type == "phase":
        return {**run, "phase": [f"window{i}" for i in idx], "node": [None] * n,
                "start_ns": [T0 + i * 10**9 for i in idx], "end_ns": [T0 + i * 10**9 + 5 * 10**8 for i in idx],
                "tokens": [1000 + i for i in idx]}
    if event_type == "power_sample":
        return {**run, "power_source": ["simulated"] * n, "meter_id": ["sim0"] * n, "channel": [0] * n,
                "node": ["node0"] * n, "seq": idx, "meter_time_ns": [i * 20_000_000 for i in idx],
                "host_time_ns": [T0 + i * 20_000_000 for i in idx], "host_monotonic_ns": [i * 20_000_000 for i in idx],
                "power_w": [3.0 + (i % 7) * 0.5 for i in idx], "voltage_v": [230.0] * n,
                "current_a": [0.02] * n, "power_factor": [0.9] * n, "frequency_hz": [50.0] * n,
                "energy_counter_j": [float(i) for i in idx]}
    if event_type == "thermal_sample":
        return {**run, "node": ["node0"] * n, "sensor": ["cpu-thermal"] * n,
                "host_time_ns": [T0 + i * 10**9 for i in idx], "temperature_c": [45.0 + i / 10 for i in idx],
                "throttled": [False] * n, "throttle_flags": [0] * n}
    if event_type == "benchmark_answer":
        return {**run, "benchmark": ["mmlu"] * n, "question_set_sha256": [sha("qs")] * n,
                "question_id": [f"q{i}" for i in idx], "subject": ["anatomy"] * n, "shots": [5] * n,
                "prompt_sha256": [sha(f"p{i}") for i in idx], "predicted": [i % 4 for i in idx],
                "gold": [1] * n, "correct": [i % 4 == 1 for i in idx],
                "choice_scores": [[-1.0, -0.5, -2.0, -3.0 - i] for i in idx], "tokens_evaluated": [300] * n}
    if event_type == "perplexity":
        return {**run, "text_sha256": [sha("text")] * n, "context": [512] * n, "chunks": [8] * n,
                "tokens": [4096] * n, "ppl": [22.0 + i for i in idx], "ppl_stderr": [0.5] * n}
    if event_type == "kld":
        return {**run, "base_sha256": [sha("base")] * n, "text_sha256": [sha("text")] * n, "context": [512] * n,
                "chunks": [8] * n, "kld_mean": [0.01 * (i + 1) for i in idx], "kld_mean_stderr": [0.001] * n,
                "kld_median": [0.005] * n, "kld_p99": [0.2] * n, "ppl_ratio": [1.01] * n,
                "ppl_ratio_stderr": [0.002] * n, "same_top_p": [0.95] * n}
    if event_type == "throughput":
        return {**run, "test": [("pp", "tg", "pg")[i % 3] for i in idx], "n_prompt": [512] * n,
                "n_gen": [128] * n, "repetitions": [5] * n, "n_threads": [2] * n,
                "tokens_per_s": [100.0 + i for i in idx], "tokens_per_s_stddev": [1.5] * n, "rpc_nodes": [0] * n}
    raise KeyError(event_type)


def batch(event_type: str, n: int = 3, **kwargs) -> pl.DataFrame:
    """A built (not yet validated) batch of ``n`` events of ``event_type``."""
    origin, recorded_at_ns = kwargs.pop("origin", "lab"), kwargs.pop("recorded_at_ns", None)
    return events.build(event_type, rows_for(event_type, n, **kwargs), origin=origin, recorded_at_ns=recorded_at_ns)


# --------------------------------------------------------------------------- measured runs

#: Phase windows of :func:`record_measured_run` (seconds after its start): idle, then the benchmarks.
MEASURED_WINDOWS = {"idle_baseline": (0.5, 2.5), "mmlu": (3.0, 5.0), "arc_challenge": (5.5, 7.5)}


def record_measured_run(lake, model: str, config_id: str, repeat: int, answers: list[dict], *, run_id: str | None = None,
                        origin: str = "lab", slot: int = 0, power_w: float = 5.0, power_source: str = "simulated",
                        windows: dict | None = None, recorded_at_ns: int | None = None) -> str:
    """One finished run whose benchmark windows are valid (a 20 Hz simulated meter over
    :data:`MEASURED_WINDOWS`; ``power_w`` >= 5 W, or the windows have too few samples to be
    valid) and which answered ``answers``: benchmark_answer rows without
    the run key (model, config_id, run_id are filled in). Returns the run id."""
    windows = MEASURED_WINDOWS if windows is None else windows
    run_id = run_id or f"{config_id}-{origin.split('/')[-1]}-r{repeat}"
    key = {"model": model, "config_id": config_id, "run_id": run_id}
    t0 = T0 + slot * 20 * 10**9
    step = 50_000_000
    lake.record("run", [{**key, "status": s, "repeat": repeat, "file_sha256": None, "power_source": power_source,
                         "host": "localhost", "provenance_json": "{}", "message": None} for s in ("started", "finished")],
                origin=origin)
    lake.record("phase", [{**key, "phase": ph, "node": None, "start_ns": t0 + int(lo * 1e9), "end_ns": t0 + int(hi * 1e9),
                           "tokens": None} for ph, (lo, hi) in windows.items()], origin=origin)
    end_s = max(hi for _, hi in windows.values()) + 0.5
    n = int(end_s * 1e9 / step) + 1
    busy = [any(lo <= i * step / 1e9 <= hi for ph, (lo, hi) in windows.items() if ph != "idle_baseline") for i in range(n)]
    lake.record("power_sample", {
        **{k: [v] * n for k, v in key.items()}, "power_source": [power_source] * n, "meter_id": ["sim0"] * n,
        "channel": [0] * n, "node": ["node0"] * n, "seq": list(range(n)), "meter_time_ns": [i * step for i in range(n)],
        "host_time_ns": [t0 + i * step for i in range(n)], "host_monotonic_ns": [i * step for i in range(n)],
        "power_w": [power_w if b else 3.0 for b in busy], "voltage_v": [None] * n, "current_a": [None] * n,
        "power_factor": [None] * n, "frequency_hz": [None] * n, "energy_counter_j": [None] * n}, origin=origin)
    if answers:
        lake.record("benchmark_answer", [{**key, **a} for a in answers], origin=origin, recorded_at_ns=recorded_at_ns)
    return run_id


def answer_row(benchmark: str, question: str, predicted: int | None, gold: int, *, scores: list[float] | None = None,
               norm: int | None = None, deviation: str | None = None, tokens: int = 300) -> dict:
    """A benchmark_answer row (without the run key): version 2 (engine-scored) when ``scores``
    are given, else version 1 (``predicted`` may then be None for a wrong answer)."""
    row = {"benchmark": benchmark, "question_set_sha256": sha(benchmark), "question_id": question, "subject": None,
           "shots": 0, "prompt_sha256": sha(f"{benchmark}/{question}"), "predicted": predicted, "gold": gold,
           "correct": predicted == gold if predicted is not None else False, "choice_scores": scores,
           "tokens_evaluated": tokens}
    if scores is not None:
        norm = predicted if norm is None else norm
        row.update(scoring="loglikelihood", choice_tokens=[3] * len(scores), choice_bytes=[12] * len(scores),
                   predicted_norm=norm, correct_norm=norm == gold, prompt_tokens=200, truncated_tokens=0,
                   deviation=deviation)
    return row

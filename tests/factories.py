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
    origin = kwargs.pop("origin", "lab")
    return events.build(event_type, rows_for(event_type, n, **kwargs), origin=origin)

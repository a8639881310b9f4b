"""The view contract: every derived view of the SQL files, its columns in order and their types.

The SQL (``runs.sql``, ``flips.sql``, ``summary.sql``, ``frontier.sql``, ``kld_frontier.sql``) defines the views;
this module states what they return, once, for everything that reads them in Python: the Polars twins build frames with
exactly these columns, the report conforms what it reads to them. ``tests/test_sql.py``
checks every entry against DuckDB's own description of the views, so the two cannot drift.
"""

from __future__ import annotations

import polars as pl

_S, _I32, _I, _F, _B = pl.Utf8, pl.Int32, pl.Int64, pl.Float64, pl.Boolean

#: The rows of config_summary: one configuration as measured by one origin and power source on
#: one hardware (``hardware_id``; 'unknown' for runs written before runs carried one).
CONFIG_KEY = ("model", "config_id", "origin", "power_source", "hardware_id")
#: The hardware_id the views give a run without one (run schema 1, or a window without run
#: events): a group of its own, compared with plain equality.
UNKNOWN_HARDWARE = "unknown"
#: What matched_pairs and pareto_frontier compare within (never across): a family.
FAMILY_KEY = ("model", "origin", "power_source", "hardware_id")

RUN_ENERGY = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I32, "run_status": _S, "power_source": _S,
    "hardware_id": _S, "simulated": _B, "phase": _S, "window_kind": _S, "node": _S, "start_ns": _I, "end_ns": _I, "elapsed_s": _F,
    "energy_j": _F, "net_energy_j": _F, "idle_power_w": _F, "avg_power_w": _F, "energy_uncertainty_j": _F,
    "tokens": _I, "j_per_token": _F, "net_j_per_token": _F, "coverage": _F, "valid": _B, "invalid_reasons": _S,
}
RUN_ACCURACY = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I32, "hardware_id": _S, "benchmark": _S,
    "question_set_sha256": _S, "n_questions": _I, "n_correct": _I, "accuracy": _F, "accuracy_ci_low": _F,
    "accuracy_ci_high": _F, "n_correct_norm": _I, "accuracy_norm": _F,
}
RUN_METRICS = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I32, "power_source": _S, "hardware_id": _S,
    "simulated": _B, "valid": _B, "n_benchmarks": _I, "benchmark_energy_j": _F, "benchmark_energy_uncertainty_j": _F,
    "benchmark_tokens": _I, "benchmark_questions": _I, "j_per_token": _F, "j_per_question": _F,
    "net_j_per_token": _F, "prefill_j_per_token": _F, "decode_j_per_token": _F, "accuracy": _F, "accuracy_norm": _F,
    "epi": _F,
    "epi_mmlu": _F, "epi_arc_challenge": _F, "epi_hellaswag": _F, "ppl": _F, "ppl_stderr": _F, "kld_mean": _F,
    "same_top_p": _F, "file_size_bytes": _I, "bits_per_weight": _F, "prefill_tokens_per_s": _F,
    "decode_tokens_per_s": _F, "avg_power_w": _F, "idle_power_w": _F, "invalid_reasons": _S,
}
CONFIG_IDENTITY = {
    "model": _S, "origin": _S, "config_id": _S, "effective_key": _S, "canonical_id": _S, "config_ids": pl.List(_S),
}
CONFIG_SUMMARY = {
    "model": _S, "config_id": _S, "origin": _S, "power_source": _S, "hardware_id": _S, "config_ids": pl.List(_S),
    "simulated": _B,
    "kind": _S, "early_type": _S, "middle_type": _S, "late_type": _S, "n_repeats": _I, "n_excluded": _I,
    "n_questions": _I, "j_per_token": _F, "j_per_token_ci_low": _F, "j_per_token_ci_high": _F,
    "j_per_question": _F, "j_per_question_ci_low": _F, "j_per_question_ci_high": _F, "accuracy": _F,
    "accuracy_ci_low": _F, "accuracy_ci_high": _F, "accuracy_norm": _F, "epi": _F, "epi_ci_low": _F, "epi_ci_high": _F,
    "interval_note": _S, "ppl": _F, "ppl_stderr": _F,
    "kld_mean": _F, "file_size_bytes": _F, "bits_per_weight": _F, "decode_tokens_per_s": _F,
    "prefill_j_per_token": _F, "decode_j_per_token": _F, "avg_power_w": _F, "flip_reference_id": _S, "flip_share": _F,
    "flip_share_low": _F, "flip_share_high": _F,
}
MATCHED_PAIRS = {
    "model": _S, "origin": _S, "power_source": _S, "hardware_id": _S, "simulated": _B, "config_a": _S, "config_b": _S,
    "ppl_a": _F,
    "ppl_b": _F, "ppl_stderr_a": _F, "ppl_stderr_b": _F, "ppl_diff": _F, "match_rule": _S, "ppl_test": _S,
    "n_chunks": _I, "log_ppl_ratio": _F, "log_ppl_ratio_ci_low": _F, "log_ppl_ratio_ci_high": _F, "ppl_margin": _F,
    "ppl_verdict": _S, "kld_a": _F, "kld_b": _F, "kld_diff": _F, "kld_diff_ci_low": _F, "kld_diff_ci_high": _F,
    "kld_margin": _F, "kld_verdict": _S, "matched": _B, "j_per_token_a": _F, "j_per_token_b": _F,
    "j_per_token_diff": _F, "j_per_token_diff_ci_low": _F, "j_per_token_diff_ci_high": _F, "accuracy_a": _F,
    "accuracy_b": _F, "accuracy_diff": _F, "accuracy_diff_ci_low": _F, "accuracy_diff_ci_high": _F, "epi_a": _F,
    "epi_b": _F, "epi_diff": _F, "epi_diff_ci_low": _F, "epi_diff_ci_high": _F, "n_paired_repeats": _I,
    "n_questions_paired": _I, "mcnemar_b": _I, "mcnemar_c": _I, "mcnemar_p": _F, "n_flip_questions": _I,
    "flip_share": _F, "flip_share_low": _F, "flip_share_high": _F, "note": _S,
}
PARETO_FRONTIER = {
    "model": _S, "origin": _S, "power_source": _S, "hardware_id": _S, "simulated": _B, "config_id": _S, "kind": _S,
    "accuracy": _F,
    "j_per_token": _F, "epi": _F, "accuracy_ci_low": _F, "accuracy_ci_high": _F, "j_per_token_ci_low": _F,
    "j_per_token_ci_high": _F, "on_frontier": _B, "frontier_probability": _F, "uniform_dominated": _B,
    "mixed_unmatched": _B,
}
KLD_FRONTIER = {
    "model": _S, "origin": _S, "power_source": _S, "hardware_id": _S, "simulated": _B, "config_id": _S, "kind": _S,
    "kld_mean": _F, "j_per_token": _F, "bits_per_weight": _F, "file_size_bytes": _F, "on_frontier": _B, "rank": _I,
}
ANSWER_FLIPS = {
    "model": _S, "origin": _S, "power_source": _S, "hardware_id": _S, "config_id": _S, "reference_config_id": _S, "benchmark": _S,
    "n_questions": _I, "n_flipped": _I, "flip_share": _F, "flip_share_low": _F, "flip_share_high": _F,
    "n_right_to_wrong": _I, "n_wrong_to_right": _I, "n_kl_questions": _I, "choice_kl_nats": _F,
}
#: View name -> {column: polars dtype}, in the view's column order.
VIEWS: dict[str, dict[str, pl.DataType]] = {
    "run_energy": RUN_ENERGY, "run_accuracy": RUN_ACCURACY, "run_metrics": RUN_METRICS,
    "config_identity": CONFIG_IDENTITY, "answer_flips": ANSWER_FLIPS, "config_summary": CONFIG_SUMMARY,
    "matched_pairs": MATCHED_PAIRS, "pareto_frontier": PARETO_FRONTIER, "kld_frontier": KLD_FRONTIER,
}

"""The sweep on real components: llama.cpp tools, the simulated meter on a pty, the lake.

Tiny settings (2 MMLU questions, short perplexity) keep each run to seconds; the logic is
the real one. Resume is tested by killing a sweep process mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from mqepi.lake.store import Lake
from mqepi.progress import Count
from mqepi.sweep import forecast as plan
from mqepi.sweep.resume import plan_runs
from mqepi.sweep.run import eta_text, run_sweep
from mqepi.sweep.spec import SweepError, SweepSpec, spec_from_json

pytestmark = pytest.mark.slow

CONFIGS = ["uniform_q8", "uniform_q4km"]
TINY = dict(benchmarks={"mmlu": 2}, ppl_context=64, ppl_chunks=2, kld=False, n_prompt=16, n_gen=4,
            bench_repetitions=1, idle_s=1.0, settle_s=0.0, meter_rate_hz=20.0, repeats=1)


def tiny(**kw) -> SweepSpec:
    return SweepSpec(**{**TINY, **kw})


def _runs(lake: Lake) -> pl.DataFrame:
    return lake.read("run", columns=["config_id", "run_id", "status", "repeat", "message", "power_source"])


def _results(lake: Lake, run_ids: list[str]) -> dict:
    """The deterministic results per configuration: answers and perplexity."""
    answers = lake.read("benchmark_answer", columns=["config_id", "run_id", "question_id", "correct"])
    ppl = lake.read("perplexity", columns=["config_id", "run_id", "ppl"])
    out = {}
    for cid in CONFIGS:
        a = answers.filter(pl.col("run_id").is_in(run_ids) & (pl.col("config_id") == cid)).sort("question_id")
        p = ppl.filter(pl.col("run_id").is_in(run_ids) & (pl.col("config_id") == cid))
        out[cid] = (a["question_id"].to_list(), a["correct"].to_list(), p["ppl"].to_list())
    return out


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SweepError, match="repeats = 0"):
        SweepSpec(repeats=0)
    with pytest.raises(SweepError, match="mmlu = 0 questions"):
        SweepSpec(benchmarks={"mmlu": 0})
    with pytest.raises(SweepError, match="meter = 'wattmeter'"):
        SweepSpec(meter="wattmeter")
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps({"repeats": 1, "idle": 3}))
    with pytest.raises(SweepError, match=r"spec.json: unknown field 'idle'"):
        spec_from_json(bad)
    bad.write_text("{nope")
    with pytest.raises(SweepError, match="not JSON"):
        spec_from_json(bad)
    with pytest.raises(SweepError, match="no map 'uniform_q9'"):
        run_sweep(tiny(configs=["uniform_q9"]), Lake(tmp_path / "lake"))


def test_eta_from_the_runs_finished_so_far():
    assert eta_text(0, 5, 0.0) == "" and eta_text(5, 5, 300.0) == ""
    assert eta_text(1, 4, 20.0) == "; about 60 s left" and eta_text(2, 12, 60.0) == "; about 5 min left"


def test_identity_ignores_the_subset_of_configs():
    assert tiny(configs=["uniform_q8"]).sweep_id == tiny(configs=None).sweep_id
    assert tiny().sweep_id != tiny(idle_s=2.0).sweep_id
    assert tiny(name="mine").sweep_id == "mine"


def test_kill_mid_sweep_then_resume_matches_an_uninterrupted_sweep(tmp_path):
    killed = Lake(tmp_path / "killed")
    spec = tiny(configs=CONFIGS, name="resume")
    script = (
        "import sys, json\n"
        "from mqepi import Lake, SweepSpec, run_sweep\n"
        f"spec = SweepSpec(**json.loads({json.dumps(json.dumps({**TINY, 'configs': CONFIGS, 'name': 'resume'}))}))\n"
        f"run_sweep(spec, Lake({str(killed.root)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        second = f"resume-smollm2-135m-{CONFIGS[1]}-r0-a1"
        # wait until the second run has started and its MMLU window is under way
        while time.monotonic() < deadline:
            if killed.exists() and second in set(_runs(killed)["run_id"]) and proc.poll() is None:
                time.sleep(1.5)
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = _runs(killed)
    assert before.filter(pl.col("run_id") == second)["status"].to_list() == ["started"]

    plans = plan_runs(killed, spec, CONFIGS)
    assert [(p.config_id, p.done, p.attempt, p.interrupted) for p in plans] == [
        (CONFIGS[0], True, 2, []), (CONFIGS[1], False, 2, [second])]

    result = run_sweep(spec, killed)
    assert result.marked_failed == [second]
    assert result.finished == [f"resume-smollm2-135m-{CONFIGS[1]}-r0-a2"]
    assert result.skipped == [(CONFIGS[0], 0)]
    runs = _runs(killed)
    stale = runs.filter(pl.col("run_id") == second).sort("status")
    assert stale["status"].to_list() == ["failed", "started"]
    assert "interrupted" in stale["message"][0]
    finished = sorted(runs.filter(pl.col("status") == "finished")["run_id"])
    assert finished == sorted([f"resume-smollm2-135m-{CONFIGS[0]}-r0-a1", f"resume-smollm2-135m-{CONFIGS[1]}-r0-a2"])
    assert set(runs["power_source"]) == {"simulated"}

    # a third call has nothing to do and writes nothing
    files = sorted(killed.files("run"))
    again = run_sweep(spec, killed)
    assert again.finished == [] and again.marked_failed == [] and len(again.skipped) == 2
    assert sorted(killed.files("run")) == files

    # no duplicate events, the lake verifies, and nothing of the killed run is mixed in
    assert killed.verify().ok
    raw = pl.read_parquet(killed.files("benchmark_answer"))
    assert raw["event_id"].n_unique() == raw.height  # no event written twice
    answers = killed.read("benchmark_answer", columns=["run_id", "question_id"])
    assert answers.group_by("run_id", "question_id").len()["len"].max() == 1

    clean = Lake(tmp_path / "clean")
    lines: list[str] = []
    straight = run_sweep(tiny(configs=CONFIGS, name="straight"), clean, progress=lines.append)
    assert len(straight.finished) == 2
    starts = [line for line in lines if re.match(r"\[\d+/2\] ", line)]  # the ETA from the runs finished so far
    assert starts[0].endswith("-r0-a1)") and re.search(r"-r0-a1; about \d+ (s|min) left\)$", starts[1]), starts
    # the same lines carry the runs done and the estimate for a progress bar (mqepi.cli._common.progress_lines)
    assert [(s.kind, s.done, s.total) for s in starts] == [("runs", 0, 2), ("runs", 1, 2)]
    assert starts[0].left_s is None and starts[1].left_s > 0
    scored = [line for line in lines if isinstance(line, Count) and line.kind == "questions"]
    assert all(re.fullmatch(r"  mmlu: [12]/2 questions scored", line) for line in scored), scored
    assert _results(killed, finished) == _results(clean, straight.finished)
    # every measured window of a finished run has power samples of its own run
    phases = killed.read("phase", columns=["run_id", "phase", "start_ns", "end_ns"])
    samples = killed.read("power_sample", columns=["run_id", "host_time_ns"])
    for row in phases.filter(pl.col("run_id").is_in(finished)).iter_rows(named=True):
        inside = samples.filter((pl.col("run_id") == row["run_id"])
                                & pl.col("host_time_ns").is_between(row["start_ns"], row["end_ns"]))
        assert inside.height > 0, row


def test_windows_of_a_run_never_overlap(tmp_path):
    lake = Lake(tmp_path / "lake")
    result = run_sweep(tiny(configs=["uniform_q8"], throughput=True, kld=True, ppl_context=128), lake)
    phases = lake.read("phase", columns=["run_id", "phase", "start_ns", "end_ns"]).sort("start_ns")
    assert set(phases["phase"]) == {"idle_baseline", "mmlu", "perplexity", "kld", "pp", "tg"}
    ends = phases["end_ns"].to_list()
    starts = phases["start_ns"].to_list()
    assert all(starts[i + 1] >= ends[i] for i in range(len(starts) - 1)), phases
    prov = json.loads(lake.read("run", run_id=result.finished[0])["provenance_json"][0])
    assert prov["meter"]["source"] == "simulated" and prov["sweep_id"] == result.sweep_id
    assert prov["llama_cpp_commit"] and prov["question_sets"]["mmlu"]
    from mqepi.quality.tasks import TASKS
    assert prov["tasks"]["mmlu"] == {"version": TASKS["mmlu"].version, "sha256": TASKS["mmlu"].sha256,
                                     "shots": TASKS["mmlu"].shots, "questions": TINY["benchmarks"]["mmlu"]}
    # every run event carries the hardware profile's id; the profile is in the provenance
    hw = prov["hardware"]
    assert set(lake.read("run")["hardware_id"]) == {hw["hardware_id"]}
    assert (hw["meter_id"], hw["llama_cpp_commit"]) == ("simulated", prov["llama_cpp_commit"]) and hw["kernel"]

    # the planner, fed by this run: a forecast for both configs, the unmeasured one by size
    f = plan.forecast(tiny(configs=["uniform_q8", "uniform_q2k"]), lake)
    by = {c.config_id: c for c in f.configs}
    assert by["uniform_q8"].source == "measured" and by["uniform_q2k"].source.startswith("from 1 measured")
    assert 0 < by["uniform_q2k"].seconds_per_run <= by["uniform_q8"].seconds_per_run
    assert f.energy_j is not None and f.energy_j > 0 and f.power_source == "simulated"
    bigger = plan.forecast(tiny(configs=["uniform_q8"], benchmarks={"mmlu": 40}), lake)
    assert bigger.seconds > f.configs[0].seconds_per_run
    assert bigger.tokens["mmlu"] > f.tokens["mmlu"]


def test_plan_without_runs_says_what_to_do(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    with pytest.raises(plan.PlanError, match="no finished run"):
        plan.forecast(tiny(configs=["uniform_q8"]), lake)

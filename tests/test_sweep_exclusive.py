"""One process per sweep id and per measured node, on real components.

A first sweep runs in a subprocess (real llama.cpp tools, the simulated meter, the lake) and
is held mid-run by its own progress callback, which waits for a line on stdin after the idle
window: while it waits, the test knows that the sweep holds its locks and has a run started.
Second processes (the CLI, with and without Prefect) and a second sweep on the same node are
refused; the first then finishes, or is SIGKILLed and resumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import polars as pl
import pytest

from mqepi.lake.locks import is_held
from mqepi.lake.store import Lake
from mqepi.sweep.exclusive import SweepBusy, hold
from mqepi.sweep.resume import RunPlan, attempt_of, mark_failed, plan_runs, run_id_for
from mqepi.sweep.rig import Rig
from mqepi.sweep.run import run_sweep
from mqepi.sweep.session import RunSession, RunTaken
from mqepi.sweep.spec import SweepError, SweepSpec

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
TINY = dict(model=MODEL, configs=["uniform_q8"], repeats=1, benchmarks={"mmlu": 2}, ppl_context=64, ppl_chunks=2,
            kld=False, throughput=False, idle_s=1.0, settle_s=0.0, meter_rate_hz=20.0)
SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # schemas/events.py SLUG

# a sweep that stops after its idle window until a line arrives on stdin
FIRST = """
import json, sys
from mqepi import Lake, SweepSpec, run_sweep

def progress(line):
    print(line, flush=True)
    if line.strip().startswith("idle baseline"):
        sys.stdin.readline()

result = run_sweep(SweepSpec(**json.loads(sys.argv[1])), Lake(sys.argv[2]), progress=progress)
print("FINISHED " + json.dumps(result.finished), flush=True)
"""


def _start_first(spec: dict, lake: Lake) -> subprocess.Popen:
    """The first sweep, in a process of its own."""
    return subprocess.Popen([sys.executable, "-c", FIRST, json.dumps(spec), str(lake.root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, prefix: str) -> list[str]:
    """Read the process's progress lines until one starts with ``prefix``."""
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"the sweep ended before {prefix!r}: {lines[-20:]}"
        lines.append(line.strip())
        if lines[-1].startswith(prefix):
            return lines


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _cli(lake: Lake, *args: str) -> subprocess.CompletedProcess:
    """``mqepi --lake LAKE sweep ARGS`` in a process of its own, to its end."""
    return subprocess.run([sys.executable, "-m", "mqepi", "--lake", str(lake.root), "sweep", *args],
                          capture_output=True, text=True, timeout=300)


def _runs(lake: Lake) -> pl.DataFrame:
    """The lake's run events."""
    return lake.read("run", columns=["config_id", "run_id", "status", "message"])


@pytest.fixture(scope="module")
def contested(tmp_path_factory):
    """A first sweep held mid-run while others try: the CLI with the same sweep (through the
    Prefect path and directly) and, in this process, another sweep on the same node."""
    root = tmp_path_factory.mktemp("contested")
    lake = Lake(root / "lake")
    spec = {**TINY, "name": "contested"}
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    first = _start_first(spec, lake)
    try:
        _wait_for(first, "idle baseline")
        cli = _cli(lake, "--spec", str(spec_file))
        direct = _cli(lake, "--spec", str(spec_file), "--no-prefect")
        with pytest.raises(SweepBusy) as other:
            run_sweep(SweepSpec(**{**spec, "name": "other"}), lake)
        held_meanwhile = is_held(lake.lock_path("sweep-contested")), is_held(lake.lock_path("node-localhost"))
        first.stdin.write("go\n")
        first.stdin.flush()
        tail = first.communicate(timeout=900)[0]
    finally:
        _kill(first)
    assert first.returncode == 0, tail[-3000:]
    finished = json.loads(tail.strip().splitlines()[-1].removeprefix("FINISHED "))
    return dict(lake=lake, pid=first.pid, cli=cli, direct=direct, other=other.value, held=held_meanwhile,
                finished=finished)


def test_a_second_process_with_the_same_sweep_id_fails_at_once_naming_the_holder(contested):
    assert contested["held"] == (True, True)
    for result in (contested["cli"], contested["direct"]):
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        message = result.stderr.strip()
        assert "\n" not in message and result.stdout == "", result.stdout + result.stderr
        assert message.startswith("error: cannot run sweep contested: sweep contested is held by ")
        assert f"pid {contested['pid']} on {socket.gethostname()} since " in message
        assert "sweep contested" in message and f"model {MODEL}" in message


def test_another_sweep_on_the_same_node_is_refused_on_the_node_lock(contested):
    err: SweepBusy = contested["other"]
    assert err.holder["pid"] == contested["pid"] and err.holder["sweep"] == "contested"
    assert err.path == contested["lake"].lock_path("node-localhost")
    assert str(err).startswith("cannot run sweep other: node localhost is held by ")
    provenance = contested["lake"].read("run", columns=["provenance_json"])["provenance_json"]
    assert {json.loads(p)["sweep_id"] for p in provenance} == {"contested"}  # the refused one wrote nothing


def test_the_lake_holds_one_measurement_per_run(contested):
    lake = contested["lake"]
    run_id = run_id_for("contested", MODEL, "uniform_q8", 0, 1)
    assert contested["finished"] == [run_id]
    assert sorted(_runs(lake)["status"]) == ["finished", "started"]
    phases = lake.read("phase", columns=["run_id", "phase"])
    assert sorted(phases["phase"]) == ["idle_baseline", "mmlu", "perplexity"]  # one window of each kind
    answers = lake.read("benchmark_answer", columns=["run_id", "question_id"])
    assert answers.height == 2 and answers["question_id"].n_unique() == 2
    assert set(lake.read("power_sample", columns=["run_id"])["run_id"]) == {run_id}
    assert lake.verify().ok
    assert not is_held(lake.lock_path("sweep-contested")) and not is_held(lake.lock_path("node-localhost"))


def test_one_name_for_two_models_gives_distinct_run_ids(contested):
    lake = contested["lake"]
    other_model = SweepSpec(**{**TINY, "name": "contested", "model": "llama-3.1-8b"})
    [plan] = plan_runs(lake, other_model, ["uniform_q8"])
    assert (plan.done, plan.attempt, plan.interrupted) == (False, 1, [])
    assert plan.run_id == "contested-llama-3.1-8b-uniform_q8-r0-a1" != contested["finished"][0]
    [again] = plan_runs(lake, SweepSpec(**{**TINY, "name": "contested"}), ["uniform_q8"])
    assert again.done and again.attempt == 2
    # ids stay slugs of at most 128 characters, long names end in a hash and still resume
    long_a = run_id_for("n" * 64, "m" * 60, "c" * 60, 12, 345)
    long_b = run_id_for("n" * 64, "m" * 60, "c" * 59 + "d", 12, 345)
    assert long_a != long_b and len(long_a) <= 128 and pl.Series([long_a]).str.contains(SLUG).all()
    assert attempt_of(long_a, "n" * 64, "m" * 60, "c" * 60, 12) == 345
    assert attempt_of("contested-uniform_q8-r0-a3", "contested", MODEL, "uniform_q8", 0) == 3  # older ids
    assert attempt_of("contested-x-uniform_q8-r0-a3", "contested", MODEL, "uniform_q8", 0) is None
    with pytest.raises(SweepError, match="name = 'a/b'"):
        SweepSpec(**{**TINY, "name": "a/b"})


def test_a_killed_sweep_frees_its_locks_and_a_rerun_redoes_the_run(tmp_path):
    lake = Lake(tmp_path / "lake")
    spec = {**TINY, "name": "killed"}
    first = _start_first(spec, lake)
    try:
        _wait_for(first, "idle baseline")  # a run started, the locks held
        assert is_held(lake.lock_path("sweep-killed"))
    finally:
        _kill(first)
    assert not is_held(lake.lock_path("sweep-killed")) and not is_held(lake.lock_path("node-localhost"))
    stale = run_id_for("killed", MODEL, "uniform_q8", 0, 1)
    assert _runs(lake)["status"].to_list() == ["started"]

    result = run_sweep(SweepSpec(**spec), lake)
    assert result.marked_failed == [stale]
    assert result.finished == [run_id_for("killed", MODEL, "uniform_q8", 0, 2)]
    runs = _runs(lake)
    by_run = {r: sorted(runs.filter(pl.col("run_id") == r)["status"]) for r in set(runs["run_id"])}
    assert by_run == {stale: ["failed", "started"], result.finished[0]: ["finished", "started"]}
    assert "interrupted" in runs.filter(pl.col("status") == "failed")["message"][0]


def test_a_run_takes_events_from_one_session_only(tmp_path):
    lake = Lake(tmp_path / "lake")
    spec = SweepSpec(**{**TINY, "name": "guarded"})
    run_id = run_id_for("guarded", MODEL, "uniform_q8", 0, 1)
    plan = RunPlan("uniform_q8", 0, 1, run_id, False)
    with Rig(spec, lake) as rig:
        q = rig.quantize("uniform_q8")
        session = RunSession(rig, plan, q, q.path)
        session.begin()
        with hold(spec, lake) as held:  # another writer ends the run meanwhile
            mark_failed(lake, spec, plan, run_id, held)
        with pytest.raises(SweepError, match="not held by this process"):
            mark_failed(lake, spec, plan, run_id, held)
        with pytest.raises(RunTaken, match="failed, started"):
            session.finish()
        session.fail(RuntimeError("late"))  # writes nothing to an ended run
        second = RunSession(rig, plan, q, q.path)
        with pytest.raises(RunTaken, match="already has run events"):
            second.begin()
        second.fail(RuntimeError("refused"))  # it never began the run: writes nothing
    assert sorted(_runs(lake)["status"]) == ["failed", "started"]
    assert "interrupted" in _runs(lake).filter(pl.col("status") == "failed")["message"][0]


def test_the_sweep_deployment_runs_one_flow_at_a_time():
    from mqepi.flows import prefect_environment

    prefect_environment()
    from mqepi.flows.serve import deployments  # Prefect is heavy: imported only here

    sweep = deployments("t")[0]
    assert sweep.name == "t" and sweep.concurrency_limit == 1
    assert sweep.concurrency_options.collision_strategy == "ENQUEUE"

"""The flows through a real Prefect server: started here on a loopback port with a temporary
PREFECT_HOME, the deployments served by `mqepi serve`, runs triggered by
`prefect deployment run`, results checked in the lake."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from mqepi.lake.store import Lake

pytestmark = pytest.mark.slow

SETTINGS = {"ppl_context": 64, "ppl_chunks": 2, "kld": False, "throughput": False, "idle_s": 1.0, "settle_s": 0.0,
            "meter_rate_hz": 20.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_cli() -> list[str]:
    """The prefect CLI of this interpreter's environment (a venv's, not another on PATH)."""
    beside = Path(sys.executable).parent / "prefect"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "prefect"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(_prefect_cli() + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Prefect server did not become healthy in 180 s"
            time.sleep(1)
        yield env
    finally:
        _stop(proc, signal.SIGTERM, 20)
        log.close()


def _stop(proc: subprocess.Popen, sig: int, grace_s: float) -> None:
    """Signal a process group, then kill it if it has not exited within ``grace_s``."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_served_deployments_run_and_schedule(server, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    drop = tmp_path / "submissions"
    drop.mkdir()
    env = {**server, "COLUMNS": "200"}
    serve_log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "mqepi", "--lake", str(lake.root), "serve", "--name", "t",
                              "--drop", str(drop)], env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            listing = _run(_prefect_cli() + ["deployment", "ls"], env, 120)
            if all(name in listing.stdout for name in ("sweep/t", "recompute-frontier/t", "ingest-submissions/t")):
                break
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, listing.stdout + listing.stderr
            time.sleep(2)

        inspect = _run(_prefect_cli() + ["deployment", "inspect", "recompute-frontier/t"], env, 120)
        assert inspect.returncode == 0, inspect.stderr
        assert "0 * * * *" in inspect.stdout  # the hourly cron is registered

        run = _run(_prefect_cli() + ["deployment", "run", "sweep/t", "-p", 'configs=["uniform_q8"]', "-p", "repeats=1",
                                     "-p", 'benchmarks={"mmlu": 2}', "-p", f"settings={json.dumps(SETTINGS)}",
                                     "-p", "name=served", "--watch"], env, 900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        runs = lake.read("run", columns=["run_id", "status", "power_source"])
        assert runs.filter(pl.col("status") == "finished")["run_id"].to_list() == ["served-smollm2-135m-uniform_q8-r0-a1"]
        assert lake.read("benchmark_answer")["run_id"].unique().to_list() == ["served-smollm2-135m-uniform_q8-r0-a1"]
        assert lake.verify().ok

        # a community bundle of that run, dropped and ingested by the served flow
        submit = _run([sys.executable, "-m", "mqepi", "--lake", str(lake.root), "submit", "--runs",
                       "served-smollm2-135m-uniform_q8-r0-a1", "--out", str(drop / "bundle-1"), "--submitter", "alice",
                       "--contact", "alice@example.org"], env, 300)
        assert submit.returncode == 0, submit.stderr
        # ... into a second lake (the lab lake refuses a community run id it already holds)
        other = Lake(tmp_path / "community" / "lake")
        other.init()
        ingest = _run(_prefect_cli() + ["deployment", "run", "ingest-submissions/t", "-p", f"lake={other.root}",
                                        "--watch"], env, 600)
        assert ingest.returncode == 0, ingest.stdout[-3000:] + ingest.stderr[-3000:]
        assert set(other.read("run", columns=["origin"])["origin"]) == {"community/alice"}
        assert (tmp_path / "ingested.jsonl").read_text().count("\n") == 1

        for target, origin in ((lake, "lab"), (other, "community/alice")):
            frontier = _run(_prefect_cli() + ["deployment", "run", "recompute-frontier/t", "-p", f"lake={target.root}",
                                              "--watch"], env, 600)
            assert frontier.returncode == 0, frontier.stdout[-3000:] + frontier.stderr[-3000:]
            derived = Path(target.root).parent / "derived"
            assert json.loads((derived / "latest.json").read_text())
            summary = pl.read_parquet(next((derived / "snapshots").glob("*/config_summary.parquet")))
            assert set(summary["origin"]) == {origin} and set(summary["config_id"]) == {"uniform_q8"}
    finally:
        _stop(serve, signal.SIGINT, 30)
        serve_log.close()

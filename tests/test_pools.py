"""One sweep over two clusters through Prefect work pools: a real Prefect server (loopback port,
temporary PREFECT_HOME), `mqepi deploy`, two `prefect worker start` processes, two loopback
clusters of real SSH servers with different hardware profiles, one lake shared by all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from test_flows import _prefect_cli, _run, _stop, server  # noqa: F401 - the module's Prefect server fixture

from mqepi.lake.store import Lake
from mqepi.quant import toolchain
from mqepi.rig.loopback import LoopbackCluster
from mqepi.rig.processes import descendants

pytestmark = pytest.mark.slow

CONFIGS = ["uniform_q8", "uniform_q6k", "uniform_q4km", "uniform_q3ks"]
SETTINGS = {"ppl_context": 64, "ppl_chunks": 2, "kld": False, "throughput": False, "idle_s": 1.0, "settle_s": 0.0}
HARDWARE = {"node_model": "Raspberry Pi 5 Model B Rev 1.0", "ram_mb": 16384, "os": "Debian GNU/Linux 12 (bookworm)",
            "kernel": "6.6.51+rpt-rpi-2712", "meter_id": "sim0", "meter_firmware": "simulated"}


def _mqepi(lake: Lake, *args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "mqepi", "--lake", str(lake.root), *args], env, timeout)


def _worker(pool: str, env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "a")
    return subprocess.Popen(_prefect_cli() + ["worker", "start", "--pool", pool, "--type", "process"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _sweep_args(name: str, configs: list[str]) -> list[str]:
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    return ["sweep", "--clusters", "lab-a,lab-b", "--name", name, "-r", "1", "--bench", "mmlu=2",
            *[x for c in configs for x in ("-c", c)], *sets]


def _runs(lake: Lake, prefix: str) -> pl.DataFrame:
    runs = lake.read("run")
    return runs.with_columns(sweep=pl.col("provenance_json").str.json_path_match("$.sweep_id")).filter(
        pl.col("sweep").str.starts_with(prefix + "."))


def test_one_sweep_over_two_clusters(server, tmp_path):  # noqa: F811 - the fixture imported above
    tools = toolchain.ensure()
    lake = Lake(tmp_path / "lake")
    lake.init()
    env = {**server, "COLUMNS": "200", "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}
    with (LoopbackCluster(1, tools.bin_dir, hardware={**HARDWARE, "cooling": "active cooler"}) as a,
          LoopbackCluster(1, tools.bin_dir, hardware={**HARDWARE, "cooling": "passive heatsink"}) as b):
        deploy = ["deploy", "--cluster", f"lab-a={a.config_path}", "--cluster", f"lab-b={b.config_path}"]
        for _ in range(2):  # idempotent
            done = _mqepi(lake, *deploy, env=env, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
        assert "kept" in done.stderr + done.stdout
        for pool in ("lab-a", "lab-b"):
            inspect = _run(_prefect_cli() + ["work-pool", "inspect", pool], env, 120)
            assert "concurrency_limit=1" in inspect.stdout.replace(" ", ""), inspect.stdout
        workers = {p: _worker(p, env, tmp_path / f"worker-{p}.log") for p in ("lab-a", "lab-b")}
        try:
            # 1. four configurations over both clusters: one lake, two hardware ids, one group each
            first = _mqepi(lake, *_sweep_args("mc", CONFIGS), env=env)
            assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
            assert "lab-a: 2 runs" in first.stdout and "lab-b: 2 runs" in first.stdout, first.stdout[-3000:]
            runs = _runs(lake, "mc")
            finished = runs.filter(pl.col("status") == "finished")
            assert sorted(finished["config_id"]) == sorted(CONFIGS)
            assert set(finished["sweep"]) == {"mc.lab-a", "mc.lab-b"}
            per_cluster = finished.group_by("sweep").agg(pl.col("hardware_id").unique())
            ids = {row["sweep"]: row["hardware_id"] for row in per_cluster.iter_rows(named=True)}
            assert all(len(v) == 1 for v in ids.values()) and ids["mc.lab-a"] != ids["mc.lab-b"], ids
            frontier = _mqepi(lake, "sql", "SELECT DISTINCT hardware_id FROM config_summary ORDER BY 1", "-f", "json",
                              env=env, timeout=600)
            assert frontier.returncode == 0, frontier.stderr
            assert sorted(r["hardware_id"] for r in json.loads(frontier.stdout)) == sorted(v[0] for v in ids.values())

            # 2. a worker killed mid-run: its flow run crashes; the rerun redoes only that cluster's runs
            killed = subprocess.Popen([sys.executable, "-m", "mqepi", "--lake", str(lake.root),
                                       *_sweep_args("mk", CONFIGS[:2])], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
            deadline = time.monotonic() + 600
            while _runs(lake, "mk").filter(pl.col("sweep") == "mk.lab-b").is_empty():
                assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()[-3000:]
                time.sleep(1)
            for pid in descendants(workers["lab-b"].pid):  # the flow run's processes, then the worker
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            output = killed.communicate(timeout=900)[0]
            _stop(workers["lab-b"], signal.SIGKILL, 5)
            assert killed.returncode != 0, output[-3000:]
            assert "lab-b: Crashed" in output, output[-3000:]
            before = _runs(lake, "mk")
            assert before.filter(pl.col("sweep") == "mk.lab-b")["status"].to_list().count("finished") == 0
            workers["lab-b"] = _worker("lab-b", env, tmp_path / "worker-lab-b.log")
            again = _mqepi(lake, *_sweep_args("mk", CONFIGS[:2]), env=env)
            assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
            after = _runs(lake, "mk")
            a_before = before.filter(pl.col("sweep") == "mk.lab-a")
            assert after.filter(pl.col("sweep") == "mk.lab-a")["event_id"].sort().to_list() == \
                a_before["event_id"].sort().to_list()  # lab-a finished its share before: nothing redone there
            done = after.filter(pl.col("status") == "finished")
            assert sorted(done["config_id"]) == sorted(CONFIGS[:2])  # each pair finished exactly once
            assert after["event_id"].n_unique() == after.height

            # 3. two sweeps on one busy cluster: the pool's limit of 1 queues the second; no overlap
            for name in ("c1", "c2"):
                queued = _run(_prefect_cli() + ["deployment", "run", "sweep/lab-a", "-p", "name=" + name,
                                                "-p", 'configs=["uniform_q8"]', "-p", "repeats=1",
                                                "-p", 'pairs=[["uniform_q8", 0]]', "-p", 'benchmarks={"mmlu": 2}',
                                                "-p", f"settings={json.dumps(SETTINGS)}", "-p", f"lake={lake.root}"],
                              env, 120)
                assert queued.returncode == 0, queued.stdout + queued.stderr
            deadline = time.monotonic() + 900
            while True:
                runs = lake.read("run").filter(pl.col("run_id").str.contains("^c[12]-"))
                if runs.filter(pl.col("status") == "finished").height == 2:
                    break
                assert time.monotonic() < deadline and runs.filter(pl.col("status") == "failed").is_empty(), runs
                time.sleep(2)
            spans = runs.group_by("run_id").agg(pl.col("recorded_at_ns").min().alias("start"),
                                                pl.col("recorded_at_ns").max().alias("end")).sort("start")
            first_end, second_start = spans["end"][0], spans["start"][1]
            assert first_end <= second_start, spans  # the second sweep started after the first had finished
            assert lake.verify().ok
        finally:
            for worker in workers.values():
                if worker.poll() is None:
                    _stop(worker, signal.SIGTERM, 20)

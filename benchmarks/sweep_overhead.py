"""The share of a sweep's wall time spent outside model work (goal <= 5 %).

Runs the demo's sweep settings (loopback cluster, simulated meter, Prefect stages unless
--no-prefect) over a few configurations into a temporary lake and splits the wall time:

* model work: the llama.cpp tool runs on the head (time inside the executor's ``stream``),
* measurement waits that belong to the method: the idle baseline window and the settle /
  stabilisation pause,
* overhead: everything else (orchestration, Prefect task runs, lake writes and validation,
  SSH and deploy, meter start/stop, the sweep's set-up).

    python benchmarks/sweep_overhead.py --configs 4 --questions 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mqepi.cli.demo import DemoSettings
from mqepi.flows import prefect_environment
from mqepi.lake.store import Lake
from mqepi.quant import maps, toolchain
from mqepi.rig.loopback import LoopbackCluster
from mqepi.sweep import rig as sweep_rig
from mqepi.sweep.run import run_sweep


class TimedExecutor:
    """Proxy of an executor that adds up the time spent in tool runs."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def stream(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner.stream(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def __getattr__(self, name):
        return getattr(self.inner, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=4, help="how many configurations (of the 24, in name order)")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--no-prefect", action="store_true")
    args = ap.parse_args()

    timed: list[TimedExecutor] = []
    original = sweep_rig.Rig._setup

    def setup(self):
        original(self)
        self.head_exec = TimedExecutor(self.head_exec)
        timed.append(self.head_exec)

    sweep_rig.Rig._setup = setup
    tc = toolchain.ensure()
    settings = DemoSettings(questions=args.questions, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="mqepi-overhead-") as tmp, LoopbackCluster(1 + args.workers, tc.bin_dir) as lc:
        configs = sorted(p.stem for p in maps.maps_dir("smollm2-135m").glob("*.json"))[: args.configs]
        spec = settings.spec(str(lc.config_path), configs)
        spec.name = f"overhead-{time.time_ns():x}"
        pids = {n.name: (lambda name=n.name: lc.pids(name)) for n in lc.nodes if n.name != "quant"}
        lake = Lake(Path(tmp) / "lake")
        if args.no_prefect:
            result = run_sweep(spec, lake, node_pids=pids).summary()
        else:
            prefect_environment()
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
            from mqepi.flows.sweep import run_flow  # Prefect is heavy: imported only for the flow run

            start = time.perf_counter()
            result = run_flow(spec, lake.uri, node_pids=pids, progress=lambda line: None)
            flow_wall = time.perf_counter() - start
    tool_s = sum(t.seconds for t in timed)
    waits = result["seconds"].get("idle window", 0.0) + result["seconds"].get("stabilisation", 0.0)
    wall = result["wall_s"]
    overhead = wall - tool_s - waits
    print(f"sweep of {len(result['finished'])} runs ({args.configs} configs, MMLU {args.questions} q, "
          f"{'direct' if args.no_prefect else 'Prefect stages'}), wall {wall:.1f} s")
    print(f"  model work (tool runs on the head, {sum(t.calls for t in timed)} calls): {tool_s:.1f} s "
          f"= {tool_s / wall:.1%}")
    print(f"  idle windows + settle: {waits:.1f} s = {waits / wall:.1%}")
    print(f"  overhead (orchestration, lake, SSH, meter, set-up): {overhead:.1f} s = {overhead / wall:.1%} "
          f"(goal <= 5 %)")
    if not args.no_prefect:
        print(f"  Prefect flow start-up and end outside the sweep: {flow_wall - wall:.1f} s (not counted above)")
    print("  by stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result["seconds"].items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()

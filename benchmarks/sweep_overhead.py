"""The share of a sweep's wall time spent outside model work (goal <= 5 %).

Runs the demo's sweep settings (loopback cluster, simulated meter, Prefect stages unless
--no-prefect) over a few configurations into a temporary lake and splits the wall time:

* model work: the llama.cpp tool runs on the head (time inside the executor's ``stream``),
* measurement waits that belong to the method: the idle baseline window and the settle /
  stabilisation pause,
* overhead: everything else (orchestration, Prefect task runs, lake writes and validation,
  SSH and deploy, meter start/stop, the sweep's set-up).

    python benchmarks/sweep_overhead.py --configs 4 --questions 10

``--clusters 2``: the same sweep (same configurations, repeats, questions) on one loopback
cluster, then shared over two loopback clusters by :func:`mqepi.sweep.clusters.assign` (equal
seconds: no forecast), the two shares (sweeps ``<sweep>.<cluster>``) run at once in two threads
into one lake, without Prefect; both wall times and their ratio (ideal 0.5 with a core per
cluster). No ``node_pids`` is passed there: each loopback node's simulated power is driven by
the processes serving its SSH port, as in a Prefect worker.

    python benchmarks/sweep_overhead.py --clusters 2 --configs 4 --questions 10 --share-threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from mqepi.cli.demo import DemoSettings
from mqepi.flows import prefect_environment
from mqepi.lake.store import Lake
from mqepi.quant import assets, maps, toolchain
from mqepi.quant.quantize import quantize
from mqepi.rig.loopback import LoopbackCluster
from mqepi.sweep import rig as sweep_rig
from mqepi.sweep.clusters import PairStatus, assign, child_name
from mqepi.sweep.run import run_sweep
from mqepi.sweep.spec import SweepSpec


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


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=4, help="how many configurations (of the 24, in name order)")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--ppl-context", type=int, default=DemoSettings.ppl_context)
    ap.add_argument("--ppl-chunks", type=int, default=DemoSettings.ppl_chunks,
                    help="with KLD (the demo's), 2 chunks are too few: llama-perplexity prints no ppl_ratio")
    ap.add_argument("--no-prefect", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="threads per llama.cpp tool (default: llama.cpp's)")
    ap.add_argument("--clusters", type=int, default=1, help="2: one loopback cluster vs the sweep shared over two")
    ap.add_argument("--share-threads", type=int, default=None,
                    help="with --clusters: threads per tool in each share (default: --threads); 1 on 2 cores and "
                         "2 clusters gives each share a core instead of both tools spinning on both")
    return ap.parse_args()


def demo_settings(args) -> DemoSettings:
    return DemoSettings(questions=args.questions, workers=args.workers, repeats=args.repeats,
                        ppl_context=args.ppl_context, ppl_chunks=args.ppl_chunks)


def with_threads(spec: SweepSpec, threads: int | None) -> SweepSpec:
    spec.threads = threads
    return spec


def stages(result: dict, top: int = 5) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result["seconds"].items(), key=lambda kv: -kv[1])[:top])


def config_names(n: int) -> list[str]:
    return sorted(p.stem for p in maps.maps_dir("smollm2-135m").glob("*.json"))[:n]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    args = arguments()
    print(f"{os.cpu_count()} CPUs, {load()} at start; settings: {args.configs} configs x {args.repeats} repeats, "
          f"MMLU {args.questions} q, ppl_context {args.ppl_context}, ppl_chunks {args.ppl_chunks}, "
          f"{args.workers} RPC workers, threads per tool {args.threads or 'llama.cpp default'}", flush=True)
    if args.clusters > 1:
        several_clusters(args)
    else:
        overhead(args)


def overhead(args) -> None:
    timed: list[TimedExecutor] = []
    original = sweep_rig.Rig._setup

    def setup(self):
        original(self)
        self.head_exec = TimedExecutor(self.head_exec)
        timed.append(self.head_exec)

    sweep_rig.Rig._setup = setup
    tc = toolchain.ensure()
    settings = demo_settings(args)
    with tempfile.TemporaryDirectory(prefix="mqepi-overhead-") as tmp, LoopbackCluster(1 + args.workers, tc.bin_dir) as lc:
        spec = with_threads(settings.spec(str(lc.config_path), config_names(args.configs)), args.threads)
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
    report_overhead(args, result, timed, None if args.no_prefect else flow_wall)


def report_overhead(args, result: dict, timed: list[TimedExecutor], flow_wall: float | None) -> None:
    tool_s = sum(t.seconds for t in timed)
    waits = result["seconds"].get("idle window", 0.0) + result["seconds"].get("stabilisation", 0.0)
    wall = result["wall_s"]
    overhead = wall - tool_s - waits
    print(f"sweep of {len(result['finished'])} runs ({args.configs} configs, MMLU {args.questions} q, "
          f"{'direct' if flow_wall is None else 'Prefect stages'}), wall {wall:.1f} s")
    print(f"  model work (tool runs on the head, {sum(t.calls for t in timed)} calls): {tool_s:.1f} s "
          f"= {tool_s / wall:.1%}")
    print(f"  idle windows + settle: {waits:.1f} s = {waits / wall:.1%}")
    print(f"  overhead (orchestration, lake, SSH, meter, set-up): {overhead:.1f} s = {overhead / wall:.1%} "
          f"(goal <= 5 %)")
    if flow_wall is not None:
        print(f"  Prefect flow start-up and end outside the sweep: {flow_wall - wall:.1f} s (not counted above)")
    print("  by stage: " + stages(result, top=len(result["seconds"])))


def run_shares(specs: list[SweepSpec], lake: Lake) -> tuple[float, list[dict], list[str]]:
    """Run ``specs`` at once, one thread each, into ``lake``: the wall time, their summaries
    and the progress lines that say what drives each channel's simulated power."""
    results: list[dict | BaseException] = [{}] * len(specs)
    said: list[str] = []

    def one(i: int) -> None:
        progress = (lambda line: said.append(f"{specs[i].sweep_id}: {line}") if "driven by CPU time" in line else None)
        try:
            results[i] = run_sweep(specs[i], lake, progress=progress).summary()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the main thread
            results[i] = exc

    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,), name=spec.sweep_id) for i, spec in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return wall, results, said


def power_spread(lake: Lake) -> str:
    """The simulated power's 5th and 95th percentile over the lake's samples: equal when nothing
    drives the channel (flat), apart when the node's processes do."""
    watts = lake.read("power_sample", columns=["power_w"])["power_w"]
    return f"simulated power p5 {watts.quantile(0.05):.1f} W, p95 {watts.quantile(0.95):.1f} W ({len(watts)} samples)"


def quantize_first(tc, configs: list[str]) -> None:
    """Quantize the configurations into the cache (a cached file is reused), so neither timed
    sweep pays for it."""
    base = assets.ensure_base_model()
    profile = maps.load_profile("smollm2-135m")
    for config in configs:
        qmap = maps.load_map(maps.maps_dir("smollm2-135m") / f"{config}.json", profile)
        quantize(qmap, profile, base.path, base.sha256, tc.tool("llama-quantize"), tc.llama_cpp_commit,
                 toolchain.cache_root() / "gguf")


def several_clusters(args) -> None:
    """The same sweep on one loopback cluster, then shared over ``args.clusters`` of them."""
    tc = toolchain.ensure()
    settings, configs = demo_settings(args), config_names(args.configs)
    names = [f"lb{i}" for i in range(args.clusters)]
    pairs = [(c, r) for c in configs for r in range(args.repeats)]
    shares = assign(pairs, names, {}, PairStatus(), dict.fromkeys(names, True)).shares
    sweep = f"clusters-{time.time_ns():x}"
    quantize_first(tc, configs)
    print("without Prefect (the sweep/<cluster> deployments add a worker's flow-run start per share; see the "
          "single-cluster mode's 'Prefect flow start-up' figure); quantized files cached before either run")
    with tempfile.TemporaryDirectory(prefix="mqepi-clusters-") as tmp, contextlib.ExitStack() as stack:
        lcs = [stack.enter_context(LoopbackCluster(1 + args.workers, tc.bin_dir)) for _ in names]
        one = with_threads(settings.spec(str(lcs[0].config_path), configs), args.threads)
        one.name = sweep
        print(f"(a) one cluster: {len(pairs)} runs ({load()})", flush=True)
        wall_one, (res,), said = run_shares([one], Lake(Path(tmp) / "one"))
        print(f"    wall {wall_one:.1f} s, {len(res['finished'])} runs finished, threads per tool {one.threads}; "
              f"{power_spread(Lake(Path(tmp) / 'one'))}; stages: {stages(res)}")
        print(f"    {said[0] if said else ''}", flush=True)
        specs = []
        for name, lc in zip(names, lcs):
            spec = with_threads(settings.spec(str(lc.config_path), configs),
                                args.threads if args.share_threads is None else args.share_threads)
            spec.name, spec.pairs = child_name(sweep, name), [list(p) for p in shares[name].pairs]
            specs.append(spec)
        print(f"(b) {len(names)} clusters at once: " + ", ".join(f"{n} {len(shares[n].pairs)} runs" for n in names)
              + f" ({load()})", flush=True)
        wall_many, results, said = run_shares(specs, Lake(Path(tmp) / "many"))
        for line in said:
            print("    " + line)
        for spec, res in zip(specs, results):
            print(f"    {spec.sweep_id}: {len(res['finished'])} runs, its wall {res['wall_s']:.1f} s, threads per tool "
                  f"{spec.threads}; stages: {stages(res)}")
        print(f"    {power_spread(Lake(Path(tmp) / 'many'))}")
    print(f"wall: one cluster {wall_one:.1f} s, {len(names)} clusters {wall_many:.1f} s, ratio "
          f"{wall_many / wall_one:.2f} (ideal {1 / len(names):.2f}); {os.cpu_count()} CPUs; {load()} at the end")


if __name__ == "__main__":
    main()

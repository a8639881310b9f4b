"""Running a sweep: every (configuration, repeat) of a model measured, the paper's pipeline.

Per configuration: quantize (cached) -> deploy. Per repeat: thermal stabilisation -> idle
baseline window -> one window per benchmark -> perplexity / KLD -> throughput -> run
finished. Every run has ``run`` started / finished (or failed) events with its provenance.

The plain library behind the Prefect ``sweep`` flow (``mqepi.flows.sweep``): :func:`run_sweep`
calls each stage through a ``Stages`` object: :class:`DirectStages` runs them here, the
flow's stages make each one a Prefect task. Rules it keeps:

* measured windows never overlap other work on the measured nodes: all stages of a run go
  one after another; the only concurrent work is quantizing the next configuration on a
  quant host that is not a cluster node;
* one process per sweep id and per measured node: the sweep's locks
  (:mod:`mqepi.sweep.exclusive`) are taken before anything is planned and held to the end;
  a second process is refused at once with :class:`~mqepi.sweep.exclusive.SweepBusy`;
* resume: a rerun with the same spec skips each (configuration, repeat) finished in the
  lake; a run that started and never ended (the sweep was killed) is marked failed first,
  under the sweep's lock, and redone under a new run id (``...-a2``), never continued;
* only I/O stages retry (a dropped SSH connection); a validation error ends the sweep;
* one model is measured once: configurations whose effective per-tensor maps are identical
  (same base, same ``effective_map_sha256`` of the expansion) are grouped; one is measured and
  each other one is an alias (:func:`~mqepi.sweep.resume.plan_aliases`), never quantized or
  run: it gets its ``quant_config`` and a ``config_alias`` event naming the measured one, once
  the measured one's quantized file is checked to hold exactly the predicted types.
"""


from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from mqepi.progress import Count, about_left
from mqepi.quant.quantize import Quantized
from mqepi.rig.ssh import ConnectionDropped
from mqepi.sweep.exclusive import hold
from mqepi.sweep.resume import Alias, RunPlan, mark_failed, plan_aliases, plan_runs
from mqepi.sweep.rig import Rig
from mqepi.sweep.session import RunSession
from mqepi.sweep.spec import SweepSpec


class DirectStages:
    """Runs each stage here, in order; ``submit`` runs one in a background thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqepi-prefetch")

    def run(self, name: str, fn: Callable, *args, io: bool = False, **kwargs):
        return fn(*args, **kwargs)

    def submit(self, name: str, fn: Callable, *args, io: bool = False, **kwargs) -> Future:
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class SweepResult:
    sweep_id: str
    finished: list[str]  # run ids finished by this call
    skipped: list[tuple[str, int]]  # (config, repeat) already finished before
    marked_failed: list[str]  # interrupted runs found and marked failed
    seconds: dict[str, float]  # stage -> wall seconds
    wall_s: float
    aliases: dict[str, str] = field(default_factory=dict)  # alias (never run) -> the config measured in its place

    def summary(self) -> dict:
        """A JSON-able summary (what the ``sweep`` flow returns)."""
        return {"sweep_id": self.sweep_id, "finished": self.finished, "skipped": len(self.skipped),
                "marked_failed": self.marked_failed, "aliases": self.aliases, "wall_s": round(self.wall_s, 1),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def is_transient(exc: BaseException) -> bool:
    """True for errors a stage may retry: a dropped SSH connection, a connection error, a
    timeout. Anything else (a validation error, a failed tool) is terminal."""
    return isinstance(exc, (ConnectionDropped, ConnectionError, TimeoutError))


def run_sweep(spec: SweepSpec, lake, *, stages=None, progress: Callable[[str], None] = lambda line: None,
              node_pids: dict[str, Callable[[], list[int]]] | None = None, owner: dict | None = None) -> SweepResult:
    """Measure every (configuration, repeat) of ``spec`` not yet finished in ``lake``.

    Holds the sweep id's and the measured nodes' locks throughout (``owner`` adds fields to the
    holder record, e.g. ``prefect_flow_run``); raises :class:`~mqepi.sweep.exclusive.SweepBusy`
    at once if another process holds one."""
    stages = stages or DirectStages()
    own = isinstance(stages, DirectStages)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args, io: bool = False):
        start = time.perf_counter()
        try:
            return stages.run(name, fn, *args, io=io)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    finished, marked, skipped, aliases = [], [], [], {}
    try:
        with contextlib.ExitStack() as stack:
            held = stack.enter_context(hold(spec, lake, owner=owner))
            rig = timed("set-up", stack.enter_context, Rig(spec, lake, progress=progress, node_pids=node_pids))
            config_ids = [m.config_id for m in rig.maps]
            plans, aliases = timed("plan", _plan, rig, config_ids)
            marked += _mark_interrupted(rig, plans, aliases, held, progress)
            todo = [p for p in plans if not p.done and p.config_id not in aliases and spec.wants(p.config_id, p.repeat)]
            skipped = [(p.config_id, p.repeat) for p in plans if p.done and p.config_id not in aliases]
            progress(f"sweep {spec.sweep_id}: {len(config_ids)} configs x {spec.repeats} repeats; "
                     f"{len(skipped)} finished before, {len(todo)} to run"
                     + (f"; {len(aliases)} alias{'es' if len(aliases) > 1 else ''} of another configuration "
                        "(the same model: not run)" if aliases else ""))
            todo_configs = list(dict.fromkeys(p.config_id for p in todo))
            pending = _by_measured(aliases)  # measured config -> its aliases, recorded once it is checked
            for measured in [c for c in pending if c not in todo_configs and spec.wants(c)]:  # none left: check now
                timed("aliases", _record_aliases, rig, measured, pending.pop(measured), progress)
            prefetch, clock = {}, []  # the next configuration's quantize; when this call's first run started
            for index, config_id in enumerate(todo_configs):
                if config_id in prefetch:
                    q = _timed_future(seconds, "quantize (wait)", prefetch.pop(config_id))
                else:
                    q = timed("quantize", rig.quantize, config_id, io=True)
                if rig.quant_overlaps and index + 1 < len(todo_configs):
                    nxt = todo_configs[index + 1]
                    prefetch[nxt] = stages.submit("quantize", rig.quantize, nxt, io=True)
                if config_id in pending:
                    timed("aliases", _record_aliases, rig, config_id, pending.pop(config_id), progress)
                path = timed("deploy", rig.deploy, q, io=True)
                for plan in (p for p in todo if p.config_id == config_id):
                    left_s = eta_s(len(finished), len(todo), _since(clock))
                    run_id = _one_run(rig, plan, q, path, timed, progress, len(finished) + 1, len(todo), left_s)
                    finished.append(run_id)
            for fut in prefetch.values():
                fut.result()
    finally:
        if own:
            stages.close()
    return SweepResult(spec.sweep_id, finished, skipped, marked, seconds, time.perf_counter() - t0,
                       {a.config_id: a.alias_of for a in aliases.values()})


def _plan(rig: Rig, config_ids: list[str]) -> tuple[list[RunPlan], dict[str, Alias]]:
    """The runs of every configuration (done or to do) and the aliases among the configurations."""
    plans = plan_runs(rig.lake, rig.spec, config_ids)
    return plans, plan_aliases(rig.lake, rig.spec, rig.identities(), rig.base.sha256, plans)


def _by_measured(aliases: dict[str, Alias]) -> dict[str, list[Alias]]:
    """The configuration measured -> its aliases."""
    out: dict[str, list[Alias]] = {}
    for alias in aliases.values():
        out.setdefault(alias.alias_of, []).append(alias)
    return out


def _mark_interrupted(rig: Rig, plans: list[RunPlan], aliases: dict[str, Alias], held,
                      progress: Callable[[str], None]) -> list[str]:
    """Mark failed every run that started and never ended (under the sweep's lock); its
    (configuration, repeat) is redone unless the configuration is an alias. The run ids."""
    marked = []
    for plan in plans:
        for stale in plan.interrupted:
            mark_failed(rig.lake, rig.spec, plan, stale, held)
            marked.append(stale)
            alias = aliases.get(plan.config_id)
            progress(f"{stale}: started and never ended (interrupted); marked failed, "
                     + (f"not redone ({plan.config_id} is the same model as {alias.alias_of})" if alias
                        else f"redone as {plan.run_id}"))
    return marked


def _record_aliases(rig: Rig, measured: str, aliases: list[Alias], progress: Callable[[str], None]) -> None:
    """Check what llama-quantize wrote for ``measured`` against the prediction the grouping used,
    then record each alias (idempotent)."""
    rig.check_measured(measured, [a.config_id for a in aliases])
    for alias in aliases:
        new = rig.record_alias(alias)
        progress(f"{alias.config_id}: the same model as {measured} (identical tensor types); measured once, "
                 + ("recorded as an alias" if new else "an alias recorded before"))


def _timed_future(seconds: dict, name: str, fut: Future):
    start = time.perf_counter()
    try:
        return fut.result()
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


def _since(clock: list[float]) -> float:
    """Seconds since the first call with this ``clock`` (which it starts)."""
    now = time.perf_counter()
    if not clock:
        clock.append(now)
    return now - clock[0]


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left from the runs this call has finished so far (each run's quantize, deploy and
    windows included); None before the first has finished or after the last."""
    if done <= 0 or total <= done:
        return None
    return elapsed_s / done * (total - done)


def eta_text(done: int, total: int, elapsed_s: float) -> str:
    """"; about N min left" (:func:`eta_s`); "" before the first run has finished."""
    left = eta_s(done, total, elapsed_s)
    return "" if left is None else f"; {about_left(left)}"


def _one_run(rig: Rig, plan: RunPlan, q: Quantized, path: str, timed, progress, number: int, total: int,
             left_s: float | None = None) -> str:
    spec = rig.spec
    session = RunSession(rig, plan, q, path)
    left = "" if left_s is None else f"; {about_left(left_s)}"
    progress(Count(f"[{number}/{total}] {plan.config_id} repeat {plan.repeat} (run {plan.run_id}{left})", kind="runs",
                   done=number - 1, total=total, left_s=left_s))
    try:
        timed("meter start", session.begin)
        note = timed("stabilisation", session.stabilise)
        idle = timed("idle window", session.idle)
        if idle is not None:
            label = "simulated power, " if idle.simulated else ""
            progress(f"  idle baseline {idle.avg_power_w:.2f} W ({label}{'valid' if idle.valid else 'INVALID'}); {note}")
        for benchmark in spec.benchmarks:
            b = timed(f"benchmark {benchmark}", session.benchmark, benchmark, io=True)
            progress(f"  {benchmark}: {b.n_correct}/{b.n} correct, {b.tokens_evaluated} tokens, "
                     f"{(b.end_ns - b.start_ns) / 1e9:.1f} s")
        ppl, kld = timed("perplexity/kld", session.perplexity, io=True)
        progress(f"  perplexity {ppl.ppl:.2f} +/- {ppl.ppl_stderr:.2f}"
                 + (f", KLD {kld['kld_mean']:.4f}" if kld else ""))
        if spec.throughput:
            tp = timed("throughput", session.throughput, io=True)
            progress("  " + ", ".join(f"{r['test']} {r['tokens_per_s']:.1f} tok/s" for r in tp))
        timed("finish", session.finish)
    except BaseException as exc:
        session.fail(exc)
        raise
    return plan.run_id

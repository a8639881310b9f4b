"""Named measurement windows and the energy inside them.

A window is a ``phase`` event: a name (``idle_baseline``, ``mmlu``, ``pp``, ``tg`` ...), an
optional node, and host UTC start/end stamps. :func:`record_window` is the one writer of
``phase`` events (the quality tools and :class:`EnergyMonitor` call it). Its energy, per
meter channel:

* **Time base**: each sample at its clock-aligned time (:mod:`mqepi.meter.clock`), or its
  arrival stamp where the meter sent no clock.
* **Energy** (``energy_j``): the trapezoid rule over consecutive samples, clipped to the
  window by linear interpolation. Before a channel's first sample and after its last, the
  nearest reading is held (those stretches count as gaps).
* **Coverage**: the share of the window with samples. A stretch between two samples counts
  fully when it is at most ``GAP_FACTOR`` x the channel's nominal sampling period (the
  median positive interval over the run), else only ``period / interval`` of it does (one
  lost line costs one period). ``gap_s`` is the rest.
* **Uncertainty** (one standard uncertainty, J): accuracy class x energy, the reading
  resolution ``q / sqrt(12)`` per sample (x elapsed / sqrt(n)), and the sampling error
  estimated as the difference between the trapezoid and the zero-order-hold integral.
* **Net energy**: gross minus the idle power x elapsed, idle power being the average power of
  the latest valid ``idle_baseline`` window of the same run and channel that ended before
  this window started.
* **J/token**: energy / tokens of the window: the phase's own ``tokens``, else the tokens of
  the quality events of the run named like the phase (``benchmark_answer`` by its task's
  window name, ``perplexity``, ``throughput`` ``pp``/``tg``/``pg`` for prefill, decode and both).
* **Gates** (every window, kept and flagged, never dropped): coverage >= 95 %, clock
  residual < 400 ms, no throttling (a thermal sample inside the window says "throttled
  now", or the sticky "has occurred" bits changed between the thermal samples bracketing
  the window, looked for up to ``thermal_lookaround_s`` away), and enough
  samples that the resolution part of the uncertainty is within ``target_uncertainty_rel``
  of the average power.

``analysis/views.sql`` (``window_energy``, ``window_energy_total``) computes the same from
the lake in SQL; tests compare both. :class:`EnergyMonitor` is the Zeus-style live API:
``begin_window(name)`` / ``end_window(name)`` -> :class:`Measurement`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mqepi.meter.clock import MAX_RESIDUAL_MS, align
from mqepi.meter.stream import POWER_ACCURACY_REL, POWER_RESOLUTION_W, MeterError, RunKey
from mqepi.quality.tasks import TASKS

#: An interval longer than this many nominal periods is a gap.
GAP_FACTOR = 1.5
MIN_COVERAGE = 0.95
#: The resolution part of the uncertainty must be within this share of the average power.
TARGET_UNCERTAINTY_REL = 0.01
MIN_SAMPLES = 2
#: Thermal samples this long before and after a window decide whether it was throttled.
THERMAL_LOOKAROUND_S = 10.0
IDLE_PHASE = "idle_baseline"
#: vcgencmd get_throttled: bits 0-3 are "now", bits 16-19 "has occurred since boot".
THROTTLED_NOW_MASK = 0xF
THROTTLED_STICKY_MASK = 0xF0000
THROUGHPUT_PHASES = ("pp", "tg", "pg")


@dataclass(frozen=True)
class Gates:
    """Validity gates applied to every window."""

    min_coverage: float = MIN_COVERAGE
    max_clock_residual_ms: float = MAX_RESIDUAL_MS
    target_uncertainty_rel: float = TARGET_UNCERTAINTY_REL
    min_samples: int = MIN_SAMPLES
    thermal_lookaround_s: float = THERMAL_LOOKAROUND_S


@dataclass(frozen=True)
class Integral:
    """Raw integration result of one channel over one window."""

    energy_j: float
    hold_energy_j: float
    covered_s: float
    n_samples: int


def nominal_period_ns(t_ns) -> float | None:
    """Median positive interval between consecutive samples (None if there is none)."""
    t = np.sort(np.asarray(t_ns, dtype=np.int64), kind="stable")
    d = np.diff(t)
    d = d[d > 0]
    return float(np.median(d)) if d.size else None


def integrate(t_ns, p_w, start_ns: int, end_ns: int, *, period_ns: float | None = None,
              gap_factor: float = GAP_FACTOR) -> Integral:
    """Trapezoidal energy of samples ``(t_ns, p_w)`` (sorted by time, ties allowed) inside
    ``[start_ns, end_ns]``; see the module docstring for edges, gaps and coverage."""
    t = np.asarray(t_ns, dtype=np.int64)
    p = np.asarray(p_w, dtype=np.float64)
    if t.size == 0:
        raise MeterError("cannot integrate a channel without samples")
    if np.any(np.diff(t) < 0):
        raise MeterError("sample times must be sorted")
    if period_ns is None:
        period_ns = nominal_period_ns(t)
    s, e = int(start_ns), int(end_ns)
    energy = hold = covered = 0.0
    # head: before the first sample, hold it (uncovered)
    head = min(int(t[0]), e) - s
    if head > 0:
        energy += head / 1e9 * p[0]
        hold += head / 1e9 * p[0]
    tail = e - max(int(t[-1]), s)
    if tail > 0:
        energy += tail / 1e9 * p[-1]
        hold += tail / 1e9 * p[-1]
    if t.size > 1:
        ta, tb, pa, pb = t[:-1], t[1:], p[:-1], p[1:]
        lo = np.maximum(ta, s)
        hi = np.minimum(tb, e)
        keep = hi > lo
        ta, tb, pa, pb, lo, hi = ta[keep], tb[keep], pa[keep], pb[keep], lo[keep], hi[keep]
        span = (tb - ta).astype(np.float64)
        p_lo = pa + (pb - pa) * ((lo - ta).astype(np.float64) / span)
        p_hi = pa + (pb - pa) * ((hi - ta).astype(np.float64) / span)
        length = (hi - lo).astype(np.float64) / 1e9
        energy += float(np.sum(length * (p_lo + p_hi) / 2.0))
        hold += float(np.sum(length * pa))
        if period_ns:
            share = np.where(span <= gap_factor * period_ns, 1.0, period_ns / span)
            covered += float(np.sum(length * share))
    n = int(np.count_nonzero((t >= s) & (t < e)))
    return Integral(energy, hold, covered, n)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChannelEnergy:
    """Energy of one meter channel inside one window."""

    meter_id: str
    channel: int
    node: str | None
    power_source: str
    elapsed_s: float
    energy_j: float
    avg_power_w: float | None
    energy_uncertainty_j: float
    sampling_error_j: float
    n_samples: int
    samples_needed: int | None
    coverage: float | None
    gap_s: float
    clock_residual_max_ms: float | None
    idle_power_w: float | None
    net_energy_j: float | None
    net_energy_uncertainty_j: float | None
    thermal_samples: int
    throttled: bool
    valid: bool
    invalid_reasons: tuple[str, ...]


@dataclass(frozen=True)
class Measurement:
    """One window: energy per channel and in total, net of idle, per token, and its gates.

    Units are in the names; ``power_sources`` says where the numbers come from (``simulated``
    numbers are not measurements)."""

    name: str
    run_id: str
    node: str | None
    start_ns: int
    end_ns: int
    elapsed_s: float
    energy_j: float | None
    avg_power_w: float | None
    energy_uncertainty_j: float | None
    net_energy_j: float | None
    net_energy_uncertainty_j: float | None
    tokens: int | None
    token_source: str | None
    j_per_token: float | None
    net_j_per_token: float | None
    coverage: float | None
    power_sources: tuple[str, ...]
    valid: bool
    invalid_reasons: tuple[str, ...]
    channels: tuple[ChannelEnergy, ...] = field(default=())

    @property
    def simulated(self) -> bool:
        return "simulated" in self.power_sources

    def energy_by_channel_j(self) -> dict[tuple[str, int], float]:
        return {(c.meter_id, c.channel): c.energy_j for c in self.channels}


# --------------------------------------------------------------------------- computing


def _source_figures(power_source: str) -> tuple[float, float]:
    parts = power_source.split(",")
    return (max(POWER_RESOLUTION_W.get(s, 1.0) for s in parts), max(POWER_ACCURACY_REL.get(s, 0.01) for s in parts))


def _thermal_state(thermal: pl.DataFrame | None, node: str | None, start_ns: int, end_ns: int,
                   lookaround_s: float) -> tuple[int, bool]:
    """(thermal samples near the window, throttled?). Throttled: a sample inside the window
    says "throttled now", or the sticky "has occurred" bits differ between the last sample
    at or before the start and the first at or after the end (within the look-around)."""
    if thermal is None or thermal.height == 0:
        return 0, False
    margin = int(lookaround_s * 1e9)
    near = thermal.filter((pl.col("host_time_ns") >= start_ns - margin) & (pl.col("host_time_ns") <= end_ns + margin))
    if node is not None:
        near = near.filter(pl.col("node") == node)
    if near.height == 0:
        return 0, False
    near = near.sort("host_time_ns", maintain_order=True)
    inside = near.filter((pl.col("host_time_ns") >= start_ns) & (pl.col("host_time_ns") <= end_ns))
    now = bool(inside["throttled"].any()) if inside.height else False
    before = near.filter(pl.col("host_time_ns") <= start_ns)
    after = near.filter(pl.col("host_time_ns") >= end_ns)
    before_flags = (before if before.height else near)["throttle_flags"][-1 if before.height else 0]
    after_flags = (after if after.height else near)["throttle_flags"][0 if after.height else -1]
    grew = (before_flags is not None and after_flags is not None
            and (before_flags & THROTTLED_STICKY_MASK) != (after_flags & THROTTLED_STICKY_MASK))
    return near.height, now or grew


def channel_energy(ch: pl.DataFrame, start_ns: int, end_ns: int, *, gates: Gates = Gates(),
                   period_ns: float | None = None, idle: tuple[float, float] | None = None,
                   thermal: pl.DataFrame | None = None) -> ChannelEnergy:
    """Energy of one channel's aligned samples (``time_ns, power_w, residual_ns, meter_id,
    channel, node, power_source``; the channel's whole run, sorted) inside a window.
    ``idle`` is ``(idle_power_w, idle_power_uncertainty_w)``."""
    t = ch["time_ns"].to_numpy()
    integral = integrate(t, ch["power_w"].to_numpy(), start_ns, end_ns, period_ns=period_ns)
    elapsed = (end_ns - start_ns) / 1e9
    sources = ",".join(sorted(set(ch["power_source"].to_list())))
    resolution, accuracy = _source_figures(sources)
    energy = integral.energy_j
    avg = energy / elapsed if elapsed > 0 else None
    sampling = abs(energy - integral.hold_energy_j)
    u_res = resolution / math.sqrt(12) * elapsed / math.sqrt(max(integral.n_samples, 1))
    uncertainty = math.sqrt((accuracy * energy) ** 2 + u_res**2 + sampling**2)
    needed = (math.ceil((resolution / math.sqrt(12) / (gates.target_uncertainty_rel * avg)) ** 2)
              if avg is not None and avg > 0 else None)
    coverage = integral.covered_s / elapsed if elapsed > 0 else None
    inside = (t >= start_ns) & (t < end_ns)
    residuals = ch["residual_ns"].to_numpy()[inside] if "residual_ns" in ch.columns else np.zeros(0)
    residuals = residuals[~np.isnan(residuals.astype(np.float64))] if residuals.size else residuals
    residual_ms = float(np.abs(residuals.astype(np.float64)).max() / 1e6) if residuals.size else None
    node = ch["node"].drop_nulls().min()
    thermal_n, throttled = _thermal_state(thermal, node, start_ns, end_ns, gates.thermal_lookaround_s)
    reasons = []
    if elapsed <= 0:
        reasons.append("empty window")
    if coverage is None or coverage < gates.min_coverage:
        reasons.append(f"coverage {coverage if coverage is not None else float('nan'):.3f} < {gates.min_coverage}")
    if residual_ms is not None and residual_ms >= gates.max_clock_residual_ms:
        reasons.append(f"clock residual {residual_ms:.1f} ms >= {gates.max_clock_residual_ms} ms")
    if throttled:
        reasons.append("throttled")
    if needed is None or integral.n_samples < max(gates.min_samples, needed):
        reasons.append(f"samples {integral.n_samples} < {max(gates.min_samples, needed or 0) if needed else 'n/a'} needed")
    idle_w = net = u_net = None
    if idle is not None:
        idle_w = idle[0]
        net = energy - idle_w * elapsed
        u_net = math.sqrt(uncertainty**2 + (idle[1] * elapsed) ** 2)
    return ChannelEnergy(
        meter_id=ch["meter_id"][0], channel=int(ch["channel"][0]), node=node, power_source=sources,
        elapsed_s=elapsed, energy_j=energy, avg_power_w=avg, energy_uncertainty_j=uncertainty,
        sampling_error_j=sampling, n_samples=integral.n_samples, samples_needed=needed, coverage=coverage,
        gap_s=max(elapsed - integral.covered_s, 0.0), clock_residual_max_ms=residual_ms, idle_power_w=idle_w,
        net_energy_j=net, net_energy_uncertainty_j=u_net, thermal_samples=thermal_n, throttled=throttled,
        valid=not reasons, invalid_reasons=tuple(reasons))


def combine(name: str, run_id: str, node: str | None, start_ns: int, end_ns: int,
            channels: list[ChannelEnergy], tokens: int | None = None, token_source: str | None = None) -> Measurement:
    """The window total over its channels."""
    elapsed = (end_ns - start_ns) / 1e9
    if elapsed <= 0 or not channels:
        reason = "empty window" if elapsed <= 0 else "no power samples"
        return Measurement(name, run_id, node, start_ns, end_ns, elapsed, None, None, None, None, None, tokens,
                           token_source, None, None, None, (), False, (reason,), ())
    energy = sum(c.energy_j for c in channels)
    u = math.sqrt(sum(c.energy_uncertainty_j**2 for c in channels))
    nets = [c.net_energy_j for c in channels]
    net = sum(nets) if all(n is not None for n in nets) else None
    u_net = math.sqrt(sum(c.net_energy_uncertainty_j**2 for c in channels)) if net is not None else None
    per_token = energy / tokens if tokens else None
    net_per_token = net / tokens if tokens and net is not None else None
    reasons = tuple(f"ch{c.channel}: {r}" for c in channels for r in c.invalid_reasons)
    sources = tuple(sorted({s for c in channels for s in c.power_source.split(",")}))
    return Measurement(name, run_id, node, start_ns, end_ns, elapsed, energy,
                       energy / elapsed if elapsed > 0 else None, u, net, u_net, tokens, token_source, per_token,
                       net_per_token, min(c.coverage if c.coverage is not None else 0.0 for c in channels),
                       sources, all(c.valid for c in channels), reasons, tuple(channels))


def quality_tokens(lake, run_id: str) -> dict[str, tuple[int, str]]:
    """Tokens per phase name from the run's quality events: ``{phase: (tokens, source)}``."""
    out: dict[str, tuple[int, str]] = {}
    answers = lake.read("benchmark_answer", columns=["benchmark", "tokens_evaluated"], run_id=run_id)
    for benchmark, tokens in answers.group_by("benchmark").agg(pl.col("tokens_evaluated").sum()).iter_rows():
        out[TASKS[benchmark].phase] = (int(tokens), "benchmark_answer")
    ppl = lake.read("perplexity", columns=["tokens"], run_id=run_id)
    if ppl.height:
        out["perplexity"] = (int(ppl["tokens"].sum()), "perplexity")
    tp = lake.read("throughput", columns=["test", "n_prompt", "n_gen", "repetitions"], run_id=run_id)
    if tp.height:
        per = tp.with_columns(
            tokens=pl.when(pl.col("test") == "pp").then(pl.col("n_prompt").cast(pl.Int64))
            .when(pl.col("test") == "tg").then(pl.col("n_gen").cast(pl.Int64))
            .otherwise(pl.col("n_prompt").cast(pl.Int64) + pl.col("n_gen")) * pl.col("repetitions"))
        for test, tokens in per.group_by("test").agg(pl.col("tokens").sum()).iter_rows():
            out[test] = (int(tokens), "throughput")
    return out


def analyze_run(lake, run_id: str, *, gates: Gates = Gates(), phases: pl.DataFrame | None = None) -> list[Measurement]:
    """Every phase window of a run, measured from the lake (the same as the SQL view
    ``window_energy_total``), in start order."""
    if phases is None:
        phases = lake.read("phase", run_id=run_id)
    phases = phases.sort(["start_ns", "phase"])
    power = lake.read("power_sample", run_id=run_id, columns=[
        "meter_id", "channel", "node", "power_source", "seq", "meter_time_ns", "host_time_ns", "power_w"])
    thermal = lake.read("thermal_sample", run_id=run_id, columns=["node", "host_time_ns", "throttled", "throttle_flags"])
    tokens = quality_tokens(lake, run_id)
    aligned, _ = align(power)
    channels = []
    for _, ch in aligned.sort(["meter_id", "channel", "time_ns", "host_time_ns", "seq"]).group_by(
            ["meter_id", "channel"], maintain_order=True):
        channels.append((ch, nominal_period_ns(ch["time_ns"].to_numpy())))
    rows = list(phases.iter_rows(named=True))
    idle_rows = [r for r in rows if r["phase"] == IDLE_PHASE]
    idle_results: dict[tuple, list[tuple[int, ChannelEnergy]]] = {}
    for r in idle_rows:
        for ch, period in channels if r["end_ns"] > r["start_ns"] else ():
            if r["node"] is not None and ch["node"].drop_nulls().min() != r["node"]:
                continue
            ce = channel_energy(ch, r["start_ns"], r["end_ns"], gates=gates, period_ns=period, thermal=thermal)
            idle_results.setdefault((ce.meter_id, ce.channel), []).append((r["end_ns"], ce))
    out = []
    for r in rows:
        results = []
        for ch, period in channels if r["end_ns"] > r["start_ns"] else ():
            if r["node"] is not None and ch["node"].drop_nulls().min() != r["node"]:
                continue
            key = (ch["meter_id"][0], int(ch["channel"][0]))
            before = [(end, ce) for end, ce in idle_results.get(key, []) if end <= r["start_ns"] and ce.valid
                      and ce.avg_power_w is not None]
            idle = None
            if before:
                _, ce = max(before, key=lambda x: x[0])
                idle = (ce.avg_power_w, ce.energy_uncertainty_j / ce.elapsed_s)
            results.append(channel_energy(ch, r["start_ns"], r["end_ns"], gates=gates, period_ns=period,
                                          idle=idle, thermal=thermal))
        n_tokens, source = (r["tokens"], "phase") if r["tokens"] is not None else tokens.get(r["phase"], (None, None))
        out.append(combine(r["phase"], run_id, r["node"], r["start_ns"], r["end_ns"], results, n_tokens, source))
    return out


# --------------------------------------------------------------------------- recording


def record_window(lake, run: RunKey, name: str, start_ns: int, end_ns: int, *, tokens: int | None = None,
                  node: str | None = None) -> None:
    """Record window ``name`` of ``run`` (host UTC ns) as its ``phase`` event; ``tokens``:
    what the window processed (none: taken from the run's quality events when measured)."""
    lake.record("phase", {**run.columns(1), "phase": [name], "node": [node], "start_ns": [start_ns],
                          "end_ns": [end_ns], "tokens": [tokens]})


# --------------------------------------------------------------------------- live monitor


class EnergyMonitor:
    """Zeus-style named windows over a live meter stream.

    ``begin_window(name)`` stamps the start; ``end_window(name)`` stamps the end, records the
    ``phase`` event, waits until the reader has a sample past the end (so the window can
    be interpolated to its edge), commits the reader's samples to the lake
    (:meth:`~mqepi.meter.stream.SampleStream.commit`) and returns the :class:`Measurement`.
    Windows nest and overlap by name. Thermal sampling of measured nodes pauses while any
    window is open unless the thermal sampler was made with ``poll_during_windows=True``;
    it reads once just before a window starts and once just after it ends.
    """

    def __init__(self, lake, run: RunKey, *, reader=None, thermal=None, gates: Gates = Gates(),
                 settle_timeout_s: float = 5.0, clock=time.time_ns):
        self.lake, self.run, self.reader, self.thermal = lake, run, reader, thermal
        self.gates, self.settle_timeout_s, self.clock = gates, settle_timeout_s, clock
        self._open: dict[str, tuple[int, str | None]] = {}

    def begin_window(self, name: str, *, node: str | None = None) -> int:
        """Open window ``name``; returns its start (host UTC ns)."""
        if name in self._open:
            raise MeterError(f"window {name!r} is already open")
        if self.thermal is not None:
            self.thermal.window_opening()
        start = self.clock()
        self._open[name] = (start, node)
        return start

    def end_window(self, name: str, *, tokens: int | None = None) -> Measurement:
        """Close window ``name``; record its phase event; return its measurement."""
        if name not in self._open:
            raise MeterError(f"window {name!r} was never begun (open: {', '.join(self._open) or 'none'})")
        end = self.clock()
        start, node = self._open.pop(name)
        if self.thermal is not None:
            self.thermal.window_closed(any_open=bool(self._open))
        record_window(self.lake, self.run, name, start, end, tokens=tokens, node=node)
        if self.reader is not None:
            self.reader.wait_past(end, timeout_s=self.settle_timeout_s)
            self.reader.commit()  # the window's samples are in the lake (a spooling sink commits now)
        phases = self.lake.read("phase", run_id=self.run.run_id)
        mine = phases.filter((pl.col("phase") == name) & (pl.col("start_ns") == start) & (pl.col("end_ns") == end))
        idle = phases.filter(pl.col("phase") == IDLE_PHASE)
        result = analyze_run(self.lake, self.run.run_id, gates=self.gates, phases=pl.concat([idle, mine]).unique(
            "event_id", maintain_order=True))
        return next(m for m in result if m.name == name and m.start_ns == start and m.end_ns == end)

    def measure_idle(self, duration_s: float, *, node: str | None = None, sleep=time.sleep) -> Measurement:
        """Measure the idle baseline window (``idle_baseline``) for ``duration_s``."""
        self.begin_window(IDLE_PHASE, node=node)
        sleep(duration_s)
        return self.end_window(IDLE_PHASE)

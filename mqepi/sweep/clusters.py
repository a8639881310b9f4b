"""One sweep over several clusters: which cluster measures which (configuration, repeat).

The plain library behind ``mqepi sweep --clusters a,b`` and the ``sweep-clusters`` flow
(:mod:`mqepi.flows.clusters`, which triggers the per-cluster deployments through Prefect work
pools). Rules:

* each cluster runs its share as a sweep of its own, named ``<sweep>.<cluster>``
  (:func:`child_name`): its own run ids, its own lock and its own resume, so two clusters never
  mark each other's live runs failed;
* a pair finished by any cluster of the sweep is done; a pair that a cluster started and never
  finished stays with that cluster (it is marked failed and redone there, on the same
  hardware), so rerunning the sweep redoes only each cluster's missing runs;
* the pairs nobody started are shared out by the planner's forecast of their seconds, longest
  first to the least loaded cluster (deterministic: ties go by name);
* a cluster that is down (no worker polls its pool) gets nothing new and keeps its share
  unstarted; with ``rebalance`` its unstarted pairs go to the clusters that are up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from mqepi.errors import MqepiError
from mqepi.quant import maps
from mqepi.rig.config import NAME as CLUSTER_NAME
from mqepi.sweep import forecast as plan
from mqepi.sweep.spec import SweepError, SweepSpec

Pair = tuple[str, int]
#: Who "finished" the pairs of a configuration recorded as an alias of another (never run).
ALIAS = "aliases"


def check_clusters(names: list[str]) -> list[str]:
    """The cluster names (work pool names), checked: at least one, no repeats, plain names."""
    if not names:
        raise SweepError("--clusters: name at least one cluster (its work pool), e.g. --clusters lab-a,lab-b")
    for name in names:
        if not CLUSTER_NAME.match(name):
            raise SweepError(f"--clusters: {name!r} is not a cluster name (letters, digits, '.', '_', '-')")
    if len(set(names)) != len(names):
        raise SweepError(f"--clusters: a cluster is named twice: {','.join(names)}")
    return names


def child_name(sweep_id: str, cluster: str) -> str:
    """The sweep id of ``cluster``'s share of sweep ``sweep_id``."""
    name = f"{sweep_id}.{cluster}"
    if len(name) > 64:
        raise SweepError(f"sweep {sweep_id!r} on cluster {cluster!r}: {name!r} is longer than a sweep id may be "
                         "(64 characters): choose a shorter --name or cluster name")
    return name


@dataclass
class PairStatus:
    """What the lake says of every pair of a multi-cluster sweep."""

    finished: dict[Pair, str] = field(default_factory=dict)  # pair -> the cluster that finished it
    started: dict[Pair, str] = field(default_factory=dict)  # pair -> the cluster that left it unfinished
    #: pair -> the cluster an earlier call gave it to (from the orchestrator's record of the
    #: shares it triggered): kept, so that a rerun redoes each cluster's own missing runs
    assigned: dict[Pair, str] = field(default_factory=dict)


def pair_status(lake, spec: SweepSpec, sweep_id: str, clusters: list[str]) -> PairStatus:
    """The pairs of ``spec`` that a share of sweep ``sweep_id`` finished or left started, from
    the lake's run events (their provenance names the share's sweep id)."""
    runs = lake.read("run", columns=["config_id", "run_id", "repeat", "status", "provenance_json"], model=spec.model)
    runs = runs.with_columns(sweep=pl.col("provenance_json").str.json_path_match("$.sweep_id"))
    prefix = f"{sweep_id}."
    runs = runs.filter(pl.col("sweep").str.starts_with(prefix))
    status = PairStatus()
    per_run = runs.group_by("sweep", "config_id", "run_id", "repeat").agg(
        finished=(pl.col("status") == "finished").any(), failed=(pl.col("status") == "failed").any())
    for row in per_run.sort("sweep", "run_id").iter_rows(named=True):
        pair, cluster = (row["config_id"], int(row["repeat"])), row["sweep"][len(prefix):]
        if row["finished"] and not row["failed"]:
            status.finished[pair] = cluster
        elif not row["finished"] and not row["failed"] and cluster in clusters:
            status.started.setdefault(pair, cluster)
    # a configuration recorded as an alias (the same model as another) is never run: its pairs are done
    aliases = lake.read("config_alias", columns=["config_id"], model=spec.model)["config_id"].unique().to_list()
    for config_id in aliases:
        for repeat in range(spec.repeats):
            status.finished.setdefault((config_id, repeat), ALIAS)
    for pair in status.finished:
        status.started.pop(pair, None)
    return status


@dataclass
class Share:
    """One cluster's part of the sweep."""

    cluster: str
    pairs: list[Pair] = field(default_factory=list)
    seconds: float = 0.0  # forecast
    up: bool = True


@dataclass
class Assignment:
    shares: dict[str, Share]
    done: list[Pair]  # finished before
    rebalanced: bool = False
    forecast: bool = True  # False: shared equally, no forecast

    @property
    def total(self) -> int:
        return len(self.done) + sum(len(s.pairs) for s in self.shares.values())

    @property
    def unstarted(self) -> dict[str, list[Pair]]:
        """Cluster (down) -> its pairs, left unstarted."""
        return {name: share.pairs for name, share in self.shares.items() if not share.up and share.pairs}

    def lines(self) -> list[str]:
        """What the sweep says about the plan, one line per cluster."""
        out = []
        for name, share in self.shares.items():
            if not share.up:
                hint = "; rerun when it is up" + ("" if self.rebalanced else ", or --rebalance to move the unstarted ones")
                out.append(f"{name}: DOWN (no worker polls its work pool): {len(share.pairs)} runs left unstarted"
                           + (hint if share.pairs else ""))
            else:
                eta = f", about {share.seconds / 60:.1f} min forecast" if self.forecast else ""
                out.append(f"{name}: {len(share.pairs)} runs{eta}")
        return out


def assign(pairs: list[Pair], clusters: list[str], seconds: dict[str, float], status: PairStatus,
           up: dict[str, bool], *, rebalance: bool = False) -> Assignment:
    """Share ``pairs`` among ``clusters`` (see the module docstring). ``seconds``: the
    forecast per run of each configuration; ``up``: whether each cluster has a worker. A pair
    started by a cluster stays there, even with ``rebalance`` (its run is redone on the same
    hardware once the cluster is back); a pair given to a cluster before stays there unless
    ``rebalance`` moves it off a cluster that is down."""
    shares = {c: Share(c, up=up.get(c, False)) for c in clusters}
    done = [p for p in pairs if p in status.finished]
    free: list[Pair] = []
    for pair in (p for p in pairs if p not in status.finished):
        owner = status.started.get(pair)
        if owner is None and status.assigned.get(pair) in shares:
            owner = status.assigned[pair]
            owner = None if rebalance and not shares[owner].up else owner
        if owner in shares:
            shares[owner].pairs.append(pair)
            shares[owner].seconds += seconds.get(pair[0], 1.0)
        else:
            free.append(pair)
    live = [s for s in shares.values() if s.up]
    targets = live if rebalance and live else list(shares.values())
    for pair in sorted(free, key=lambda p: (-seconds.get(p[0], 1.0), p)):
        share = min(targets, key=lambda s: (s.seconds, s.cluster))
        share.pairs.append(pair)
        share.seconds += seconds.get(pair[0], 1.0)
    for share in shares.values():
        share.pairs.sort()
    return Assignment(shares, done, rebalance)


def forecast_seconds(spec: SweepSpec, lake, progress: Callable[[str], None]) -> dict[str, float]:
    """Seconds per run of each configuration by the planner (aliases: 0); equal shares when
    the planner cannot forecast here (said)."""
    try:
        f = plan.forecast(spec, lake)
    except MqepiError as exc:
        progress(f"no forecast ({exc}); sharing runs equally")
        return {}
    return {c.config_id: c.seconds_per_run if c.runs else 0.0 for c in f.configs}


def plan_clusters(spec: SweepSpec, lake, clusters: list[str], up: dict[str, bool], *, rebalance: bool = False,
                  assigned: dict[Pair, str] | None = None,
                  progress: Callable[[str], None] = lambda line: None) -> Assignment:
    """Share the sweep ``spec`` among ``clusters`` (``up``: which have a worker), from the
    lake's runs of its shares, the shares given before (``assigned``) and the planner's
    forecast; said through ``progress``."""
    check_clusters(clusters)
    names = spec.configs or sorted(p.stem for p in maps.maps_dir(spec.model).glob("*.json"))
    seconds = forecast_seconds(spec, lake, progress)
    pairs = [(c, r) for c in names if seconds.get(c, 1.0) > 0 for r in range(spec.repeats)]
    status = pair_status(lake, spec, spec.sweep_id, clusters)
    status.assigned = dict(assigned or {})
    assignment = assign(pairs, clusters, seconds, status, up, rebalance=rebalance)
    assignment.forecast = bool(seconds)
    progress(f"sweep {spec.sweep_id} over {len(clusters)} clusters: {len(pairs)} runs, "
             f"{len(assignment.done)} finished before")
    for line in assignment.lines():
        progress("  " + line)
    return assignment


def finished_by(lake, spec: SweepSpec, clusters: list[str]) -> dict[str, int]:
    """Cluster -> how many of the sweep's pairs it has finished, from the lake; plus
    :data:`ALIAS` -> the pairs of configurations recorded as aliases (done without a run)."""
    status = pair_status(lake, spec, spec.sweep_id, clusters)
    out = {c: sum(1 for owner in status.finished.values() if owner == c) for c in [*clusters, ALIAS]}
    return {k: v for k, v in out.items() if k != ALIAS or v}

"""Sharing one sweep among clusters (mqepi.sweep.clusters): balance, resume per cluster, a
cluster that is down, --rebalance; and a share's pairs restricting what a sweep runs."""

from __future__ import annotations

import itertools
import json

import pytest
from factories import rows_for

from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.sweep import clusters as multi
from mqepi.sweep.spec import SweepError, SweepSpec

CONFIGS = {"a": 40.0, "b": 30.0, "c": 20.0, "d": 10.0}


def pairs(repeats: int = 2) -> list[tuple[str, int]]:
    return [(c, r) for c in sorted(CONFIGS) for r in range(repeats)]


def test_shares_are_balanced_by_the_forecast_and_deterministic():
    status = multi.PairStatus()
    one = multi.assign(pairs(), ["x", "y"], CONFIGS, status, {"x": True, "y": True})
    two = multi.assign(pairs(), ["y", "x"], CONFIGS, status, {"x": True, "y": True})
    assert {c: s.pairs for c, s in one.shares.items()} == {c: s.pairs for c, s in two.shares.items()}
    got = sorted(p for s in one.shares.values() for p in s.pairs)
    assert got == pairs()  # every pair once
    loads = [s.seconds for s in one.shares.values()]
    assert loads == [100.0, 100.0]  # 200 s of runs, split evenly (LPT finds it here)
    # the best split of any instance is never beaten by more than the longest job (greedy bound)
    best = min(max(sum(CONFIGS[c] for c, _ in part), sum(CONFIGS[c] for c, _ in pairs() if (c, _) not in part))
               for k in range(len(pairs()) + 1) for part in itertools.combinations(pairs(), k))
    assert max(loads) <= best + max(CONFIGS.values())


def test_started_pairs_stay_with_their_cluster_and_finished_ones_are_done():
    status = multi.PairStatus(finished={("a", 0): "x", ("b", 1): "y"}, started={("c", 0): "y", ("a", 1): "x"})
    got = multi.assign(pairs(), ["x", "y"], CONFIGS, status, {"x": True, "y": True})
    assert sorted(got.done) == [("a", 0), ("b", 1)]
    assert ("c", 0) in got.shares["y"].pairs and ("a", 1) in got.shares["x"].pairs
    assert not set(got.done) & {p for s in got.shares.values() for p in s.pairs}


def test_a_down_cluster_keeps_its_share_unstarted_unless_rebalanced():
    status = multi.PairStatus(started={("c", 0): "y"})
    up = {"x": True, "y": False}
    kept = multi.assign(pairs(), ["x", "y"], CONFIGS, status, up)
    assert kept.unstarted["y"] and ("c", 0) in kept.unstarted["y"]
    assert any("DOWN" in line and "--rebalance" in line for line in kept.lines())
    moved = multi.assign(pairs(), ["x", "y"], CONFIGS, status, up, rebalance=True)
    # only the started pair stays with the down cluster (redone on its own hardware later)
    assert moved.unstarted == {"y": [("c", 0)]}
    assert sorted(moved.shares["x"].pairs) == sorted(set(pairs()) - {("c", 0)})


def test_cluster_names_are_checked():
    with pytest.raises(SweepError, match="twice"):
        multi.check_clusters(["a", "a"])
    with pytest.raises(SweepError, match="not a cluster name"):
        multi.check_clusters(["a;rm"])
    with pytest.raises(SweepError, match="at least one"):
        multi.check_clusters([])
    with pytest.raises(SweepError, match="64"):
        multi.child_name("s" * 60, "cluster")


def test_spec_pairs_are_checked_and_not_part_of_the_identity():
    spec = SweepSpec(repeats=2, pairs=[["a", 1]])
    assert spec.wants("a", 1) and not spec.wants("a", 0) and spec.wants("a") and not spec.wants("b")
    assert spec.sweep_id == SweepSpec(repeats=2).sweep_id
    with pytest.raises(SweepError, match="pairs"):
        SweepSpec(repeats=2, pairs=[["a", 2]])


def test_pair_status_reads_each_shares_runs_from_the_lake(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    spec = SweepSpec(model="smollm2-135m", repeats=2, name="sw")

    def run(sweep, config, repeat, status):
        rows = rows_for("run", 1, run_id=f"{sweep}-smollm2-135m-{config}-r{repeat}-a1", config_id=config)
        rows.update(repeat=[repeat], status=[status], provenance_json=[json.dumps({"sweep_id": sweep})])
        lake.append(events.build("run", rows, origin="lab"))

    run("sw.x", "a", 0, "started")
    run("sw.x", "a", 0, "finished")
    run("sw.y", "b", 1, "started")
    run("other.x", "c", 0, "started")  # another sweep: ignored
    got = multi.pair_status(lake, spec, "sw", ["x", "y"])
    assert got.finished == {("a", 0): "x"} and got.started == {("b", 1): "y"}
    assert multi.finished_by(lake, spec, ["x", "y"]) == {"x": 1, "y": 0}
    # a configuration recorded as an alias of another is never run: its pairs are done
    lake.append(events.build("config_alias", rows_for("config_alias", 1, config_id="b"), origin="lab"))
    got = multi.pair_status(lake, spec, "sw", ["x", "y"])
    assert got.finished == {("a", 0): "x", ("b", 0): multi.ALIAS, ("b", 1): multi.ALIAS} and got.started == {}
    assert multi.finished_by(lake, spec, ["x", "y"]) == {"x": 1, "y": 0, multi.ALIAS: 2}


def test_earlier_shares_stay_unless_rebalanced_off_a_down_cluster():
    before = {("a", 0): "y", ("a", 1): "y", ("d", 0): "y"}
    status = multi.PairStatus(finished={("a", 0): "y"}, assigned=before)
    got = multi.assign(pairs(), ["x", "y"], CONFIGS, status, {"x": True, "y": True})
    assert {("a", 1), ("d", 0)} <= set(got.shares["y"].pairs)  # x is idle, yet y keeps its own share
    down = multi.assign(pairs(), ["x", "y"], CONFIGS, status, {"x": True, "y": False})
    assert {("a", 1), ("d", 0)} <= set(down.unstarted["y"])
    moved = multi.assign(pairs(), ["x", "y"], CONFIGS, status, {"x": True, "y": False}, rebalance=True)
    assert moved.unstarted == {} and {("a", 1), ("d", 0)} <= set(moved.shares["x"].pairs)

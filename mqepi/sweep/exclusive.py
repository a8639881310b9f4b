"""One process per sweep id and per measured node.

:func:`hold` takes, before anything is planned or measured, an exclusive lock on the sweep id
and one on every measured node (``node-<host>:<port>`` of the cluster config, ``node-localhost``
for this machine), for the whole sweep. A second process that wants any of them is refused at
once with :class:`SweepBusy`, whose one-line message names the holder (pid, host, since, sweep,
Prefect flow run). The kernel frees the locks when the holder dies, however it dies, so a killed
sweep never leaves one behind (:mod:`mqepi.lake.locks`).

Resume marks interrupted runs failed only with the sweep's lock held (:meth:`HeldSweep.require`):
a run of a live sweep is never marked failed by another process.

Scope: the lock files live with the lake (:meth:`mqepi.lake.store.Lake.lock_path`): they exclude
sweeps started on one machine into one lake. Node locks are per lake too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mqepi.lake.locks import LockHeld, exclusive, holder_record, is_held, read_holder
from mqepi.rig import config as cfg
from mqepi.sweep.spec import SweepError, SweepSpec

#: The node key of this machine when the sweep has no cluster config.
LOCAL_NODE = "localhost"


class SweepBusy(SweepError):
    """Another process holds this sweep id or one of its measured nodes; ``holder`` names it."""

    def __init__(self, sweep_id: str, held: LockHeld):
        self.sweep_id, self.holder, self.path = sweep_id, held.holder, held.path
        super().__init__(f"cannot run sweep {sweep_id}: {held}")


@dataclass
class HeldSweep:
    """The locks of a running sweep, held by this process while ``active``."""

    sweep_id: str
    lake_uri: str
    record: dict
    paths: list[Path] = field(default_factory=list)
    active: bool = True

    def require(self, spec: SweepSpec, lake) -> None:
        """Raise :class:`SweepError` unless these are ``spec``'s sweep locks on ``lake``, held now."""
        if not (self.active and self.sweep_id == spec.sweep_id and self.lake_uri == lake.uri):
            raise SweepError(f"sweep {spec.sweep_id}: its lock on {lake.uri} is not held by this process; "
                             "interrupted runs are marked failed only under it")


def node_keys(spec: SweepSpec) -> list[str]:
    """The measured nodes of ``spec``: ``host:port`` of each cluster node, or this machine."""
    if spec.cluster is None:
        return [LOCAL_NODE]
    return list(dict.fromkeys(f"{n.host}:{n.port}" for n in cfg.load(spec.cluster).nodes))


def lock_paths(spec: SweepSpec, lake) -> list[tuple[Path, str]]:
    """(lock file, what it guards) for the sweep id and each measured node, in taking order."""
    sweep = [(lake.lock_path(f"sweep-{spec.sweep_id}"), f"sweep {spec.sweep_id}")]
    return sweep + [(lake.lock_path(f"node-{key}"), f"node {key}") for key in node_keys(spec)]


@contextlib.contextmanager
def hold(spec: SweepSpec, lake, *, owner: dict | None = None) -> Iterator[HeldSweep]:
    """Hold the sweep id's lock and every measured node's for the block.

    ``owner`` adds fields to the holder record (``prefect_flow_run``). Raises
    :class:`SweepBusy` at once, holding nothing, if another process holds any of them."""
    record = holder_record(sweep=spec.sweep_id, model=spec.model, **(owner or {}))
    held = HeldSweep(spec.sweep_id, lake.uri, record)
    with contextlib.ExitStack() as stack:
        try:
            for path, what in lock_paths(spec, lake):
                stack.enter_context(exclusive(path, what, wait_s=0, holder=record))
                held.paths.append(path)
        except LockHeld as exc:
            raise SweepBusy(spec.sweep_id, exc) from None
        try:
            yield held
        finally:
            held.active = False


def check_free(spec: SweepSpec, lake) -> None:
    """Raise :class:`SweepBusy` if a process holds the sweep id or a node now (a quick check
    before starting a flow; :func:`hold` inside the sweep is what excludes)."""
    for path, what in lock_paths(spec, lake):
        if is_held(path):
            raise SweepBusy(spec.sweep_id, LockHeld(what, path, read_holder(path)))

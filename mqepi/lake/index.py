"""An in-memory index of the lake's committed files, by event type, run and configuration.

Built from the commit log (:mod:`mqepi.lake.log`) as it grows, so finding a run's or a
configuration's files costs a dictionary lookup, not a walk of the lake: checking a bundle
against a lake of 10^4 runs costs what it costs against an empty one. It also knows which
(model, configuration) each run id belongs to, so a run id reused under another model or
configuration is refused at write time (:meth:`FileIndex.run_conflicts`) and reported by
``lake verify`` (:attr:`FileIndex.collisions`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from mqepi.schemas import EVENT_TYPES, RUN_BOUND

#: Partition value of the zero-row seed files.
SEED_VALUE = "_seed"


def parse(rel: str) -> tuple[str, tuple[str, ...]] | None:
    """(event type, partition values) of a data file's path under the root, else None."""
    parts = rel.split("/")
    spec = EVENT_TYPES.get(parts[0])
    if spec is None or len(parts) != len(spec.partition_by) + 2:
        return None
    values = []
    for key, part in zip(spec.partition_by, parts[1:-1]):
        if not part.startswith(f"{key}="):
            return None
        values.append(part[len(key) + 1:])
    return parts[0], tuple(values)


@dataclass
class FileIndex:
    """Committed files (absolute paths) by event type, by (type, run id) and by (type, model, config)."""

    root: str
    by_type: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    by_run: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    by_config: dict[tuple[str, str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    by_model: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    #: run id -> the (model, config_id) of its first committed file
    run_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: run id -> every other (model, config_id) it was committed under (a lake written before the check)
    collisions: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    count: int = 0

    def add(self, rel: str) -> None:
        """Index one committed file (its path relative to the root)."""
        found = parse(rel)
        if found is None:
            return
        event_type, values = found
        path = f"{self.root}/{rel}"
        self.count += 1
        self.by_type[event_type].append(path)
        if all(v == SEED_VALUE for v in values):
            return
        model, config_id = values[0], values[1]
        self.by_model[(event_type, model)].append(path)
        self.by_config[(event_type, model, config_id)].append(path)
        if event_type in RUN_BOUND:
            run_id = values[2]
            self.by_run[(event_type, run_id)].append(path)
            first = self.run_keys.setdefault(run_id, (model, config_id))
            if first != (model, config_id):
                self.collisions[run_id].add((model, config_id))

    def files(self, event_type: str, model: str | None = None, config_id: str | None = None,
              run_id: str | None = None) -> list[str]:
        """The committed files of one event type, optionally of one model / configuration / run, sorted."""
        if run_id is not None:
            found = self.by_run.get((event_type, run_id), [])
        elif model is not None and config_id is not None:
            found = self.by_config.get((event_type, model, config_id), [])
        elif model is not None:
            found = self.by_model.get((event_type, model), [])
        else:
            found = self.by_type.get(event_type, [])
        if model is not None:
            found = [f for f in found if f"/model={model}/" in f]
        if config_id is not None:
            found = [f for f in found if f"/config_id={config_id}/" in f]
        return sorted(found)

    def run_conflicts(self, keys: dict[str, tuple[str, str]]) -> list[str]:
        """For run id -> (model, config_id) about to be written, one line per run id that the
        index holds under another (model, config_id)."""
        out = []
        for run_id, key in keys.items():
            held = self.run_keys.get(run_id)
            if held is not None and held != key:
                out.append(f"run_id {run_id!r} is already in the lake under model {held[0]!r}, config {held[1]!r}; "
                           f"it cannot also be a run of model {key[0]!r}, config {key[1]!r} (run ids are unique "
                           "across models and configurations)")
        return out

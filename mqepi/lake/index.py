"""An in-memory index of the lake's active files, by event type, run and configuration.

Built from the tables' Delta logs (:mod:`mqepi.lake.delta`) as they grow, so finding a run's or
a configuration's files costs a dictionary lookup, not a walk of the lake: checking a bundle
against a lake of 10^4 runs costs what it costs against an empty one. A file's configuration is
its partition; its runs are what the commit that added it recorded (``commitInfo.mqepi``).
It also knows which (model, configuration) each run id belongs to, so a run id reused under
another model or configuration is refused at write time (:meth:`FileIndex.run_conflicts`) and
reported by ``lake verify`` (:attr:`FileIndex.collisions`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from mqepi.lake.delta import DataFile
from mqepi.schemas import RUN_BOUND

#: Partition value of the zero-row seed files.
SEED_VALUE = "_seed"


@dataclass
class FileIndex:
    """Active files (absolute paths) by event type, by (type, run id) and by (type, model, config)."""

    root: str
    by_type: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_run: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    by_config: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    by_model: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    entries: dict[str, DataFile] = field(default_factory=dict)  # absolute path -> its log record
    #: run id -> the (model, config_id) of its first committed file
    run_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: run id -> every other (model, config_id) it was committed under
    collisions: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))

    @property
    def count(self) -> int:
        return len(self.entries)

    def path(self, event_type: str, entry: DataFile) -> str:
        return f"{self.root}/{event_type}/{entry.path}"

    def add(self, event_type: str, entry: DataFile) -> None:
        """Index one active file of ``event_type``."""
        path = self.path(event_type, entry)
        self.entries[path] = entry
        self.by_type[event_type].add(path)
        model, config_id = entry.partition
        if model == SEED_VALUE:
            return
        self.by_model[(event_type, model)].add(path)
        self.by_config[(event_type, model, config_id)].add(path)
        if event_type in RUN_BOUND:
            for run_id in entry.runs:
                self.by_run[(event_type, run_id)].add(path)
                first = self.run_keys.setdefault(run_id, (model, config_id))
                if first != (model, config_id):
                    self.collisions[run_id].add((model, config_id))

    def remove(self, event_type: str, entry: DataFile) -> None:
        """Forget a file a later version removed (compaction: its rows are in another file)."""
        path = self.path(event_type, entry)
        self.entries.pop(path, None)
        self.by_type[event_type].discard(path)
        model, config_id = entry.partition
        self.by_model[(event_type, model)].discard(path)
        self.by_config[(event_type, model, config_id)].discard(path)
        for run_id in entry.runs:
            self.by_run[(event_type, run_id)].discard(path)

    def files(self, event_type: str, model: str | None = None, config_id: str | None = None,
              run_id: str | None = None) -> list[str]:
        """The active files of one event type, optionally of one model / configuration / run, sorted."""
        if run_id is not None:
            found = self.by_run.get((event_type, run_id), set())
        elif model is not None and config_id is not None:
            found = self.by_config.get((event_type, model, config_id), set())
        elif model is not None:
            found = self.by_model.get((event_type, model), set())
        else:
            found = self.by_type.get(event_type, set())
        if model is not None or config_id is not None:
            found = {f for f in found
                     if (model is None or self.entries[f].partition[0] == model)
                     and (config_id is None or self.entries[f].partition[1] == config_id)}
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

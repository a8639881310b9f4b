"""Event schemas of the mqepi lake (installed as ``mqepi.schemas``).

:data:`EVENT_TYPES` maps each event type name to its :class:`EventSpec`: the pandera model,
the schema version, the key it is bound to (a run or a configuration), and whether the type
is high-volume (sample streams, de-duplicated by batch name and by readers rather than by a
lookup of existing ids on every append).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandera.polars as pa
import polars as pl

from . import events as _m

#: The key an event is bound to, per level of binding.
MODEL_KEYS = ("model",)
CONFIG_KEYS = ("model", "config_id")
RUN_KEYS = ("model", "config_id", "run_id")
#: Partition columns of every event type's Delta table (the folders of its files): a query by
#: model or configuration prunes to one folder; run ids are a column inside the files.
PARTITION_KEYS = CONFIG_KEYS
#: Columns every event has, in file order.
COMMON_COLUMNS = tuple(_m.Event.to_schema().columns)
#: Columns left out of the content hash: the id itself and the recording time.
HASH_EXCLUDED = ("event_id", "recorded_at_ns")


@dataclass(frozen=True)
class EventSpec:
    name: str
    schema_model: type[pa.DataFrameModel]
    #: RUN_KEYS (one run's events) or CONFIG_KEYS (what every run of a configuration shares)
    keys: tuple[str, ...]
    version: int = _m.SCHEMA_VERSION
    high_volume: bool = False
    #: Nullable columns added by a later version: a batch without them gets them as nulls
    #: (a writer of the older version still writes valid events; old files read as null).
    added: tuple[str, ...] = ()

    @cached_property
    def schema(self) -> pa.DataFrameSchema:
        return self.schema_model.to_schema()

    @cached_property
    def polars_schema(self) -> pl.Schema:
        """Column -> polars dtype, common columns first, then the type's own in model order."""
        cols = self.schema.columns
        order = list(COMMON_COLUMNS) + [c for c in cols if c not in COMMON_COLUMNS]
        return pl.Schema({c: cols[c].dtype.type for c in order})

    @property
    def partition_by(self) -> tuple[str, ...]:
        """The table's partition columns (in the file paths, not inside the files)."""
        return PARTITION_KEYS

    @cached_property
    def file_columns(self) -> tuple[str, ...]:
        """Columns stored inside the Parquet files (partition columns live in the path)."""
        return tuple(c for c in self.polars_schema if c not in self.partition_by)


EVENT_TYPES: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("quant_config", _m.QuantConfig, CONFIG_KEYS),
        EventSpec("quantization", _m.Quantization, CONFIG_KEYS),
        EventSpec("config_alias", _m.ConfigAlias, CONFIG_KEYS),
        EventSpec("tensor_inventory", _m.TensorInventory, CONFIG_KEYS),
        EventSpec("run", _m.Run, RUN_KEYS, version=2, added=("hardware_id",)),
        EventSpec("phase", _m.Phase, RUN_KEYS),
        EventSpec("power_sample", _m.PowerSample, RUN_KEYS, high_volume=True),
        EventSpec("thermal_sample", _m.ThermalSample, RUN_KEYS, high_volume=True),
        EventSpec("benchmark_answer", _m.BenchmarkAnswer, RUN_KEYS, version=2,
                  added=("scoring", "choice_tokens", "choice_bytes", "predicted_norm", "correct_norm", "prompt_tokens",
                         "truncated_tokens", "deviation")),
        EventSpec("perplexity", _m.Perplexity, RUN_KEYS, version=2, added=("chunk_nll", "chunk_tokens")),
        EventSpec("kld", _m.Kld, RUN_KEYS, version=2, added=("chunk_kld", "chunk_tokens")),
        EventSpec("throughput", _m.Throughput, RUN_KEYS),
    )
}


#: Event types bound to a run (key model, config_id, run_id), in EVENT_TYPES order.
RUN_BOUND = tuple(name for name, spec in EVENT_TYPES.items() if spec.keys == RUN_KEYS)
#: Event types bound to a configuration (key model, config_id): what every run of it shares.
CONFIG_BOUND = tuple(name for name, spec in EVENT_TYPES.items() if spec.keys == CONFIG_KEYS)
if set(RUN_BOUND) | set(CONFIG_BOUND) != set(EVENT_TYPES):
    raise ImportError("every event type is bound to a run or to a configuration (RUN_KEYS or CONFIG_KEYS)")


def spec_for(event_type: str) -> EventSpec:
    """The spec of ``event_type``; a clear error naming the known types otherwise."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}") from None


__all__ = ["EVENT_TYPES", "EventSpec", "spec_for", "COMMON_COLUMNS", "HASH_EXCLUDED", "RUN_BOUND", "CONFIG_BOUND"]

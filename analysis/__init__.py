"""SQL views over the lake and their helpers (installed as ``mqepi.analysis``).

The SQL contract is a list of files, loaded in order into one DuckDB connection:

* ``macros.sql``: macros the views share (the table macro every base view reads its event
  type through, the seeded bootstrap's tunables and draws);
* ``views.sql``: one view per event type, and the energy windows;
* ``runs.sql``: per-run results: run_energy, run_accuracy, run_metrics; config_identity;
* ``resamples.sql``: the hierarchical bootstrap's table macros (repeats, questions, meter);
* ``flips.sql``: answer_flips (answers that differ from the base's) and its macros;
* ``summary.sql``: config_summary;
* ``frontier.sql``: matched_pairs and pareto_frontier;
* ``kld_frontier.sql``: kld_frontier (KL divergence against J/token, for the per-layer search).

A plain ``duckdb`` session does ``SET VARIABLE mqepi_lake = '<path>'`` and ``.read`` each
file in this order (docs/sql.md). Beside them: :mod:`mqepi.analysis.contract` (each derived
view's columns), the Polars twins (:mod:`~mqepi.analysis.twin_runs`,
:mod:`~mqepi.analysis.twin_frontier`) and their shared statistics
(:mod:`~mqepi.analysis.bootstrap`, :mod:`~mqepi.analysis.hierarchical`,
:mod:`~mqepi.analysis.stats`).
"""

from pathlib import Path

_HERE = Path(__file__).parent

MACROS_SQL = _HERE / "macros.sql"
VIEWS_SQL = _HERE / "views.sql"
RUNS_SQL = _HERE / "runs.sql"
RESAMPLES_SQL = _HERE / "resamples.sql"
FLIPS_SQL = _HERE / "flips.sql"
SUMMARY_SQL = _HERE / "summary.sql"
FRONTIER_SQL = _HERE / "frontier.sql"
KLD_FRONTIER_SQL = _HERE / "kld_frontier.sql"
#: Every SQL file of the contract, in load order.
SQL_FILES = [MACROS_SQL, VIEWS_SQL, RUNS_SQL, RESAMPLES_SQL, FLIPS_SQL, SUMMARY_SQL, FRONTIER_SQL, KLD_FRONTIER_SQL]

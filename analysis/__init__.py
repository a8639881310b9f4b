"""SQL views over the lake and their helpers (installed as ``mqepi.analysis``).

The SQL contract is a list of files, loaded in order into one DuckDB connection:

* ``macros.sql``: macros the views share (the seeded bootstrap's draws);
* ``views.sql``: one view per event type, and the energy windows (issue 5);
* ``runs.sql``: per-run results: run_energy, run_accuracy, run_metrics, config_summary;
* ``frontier.sql``: matched_pairs and pareto_frontier.

A plain ``duckdb`` session does ``SET VARIABLE mqepi_lake = '<path>'`` and ``.read`` each
file in this order (docs/sql.md).
"""

from pathlib import Path

_HERE = Path(__file__).parent

#: The base file: ``SET VARIABLE mqepi_lake = '<path>'; .read views.sql``.
VIEWS_SQL = _HERE / "views.sql"

#: Every SQL file of the contract, in load order (a file not written yet is skipped).
MACROS_SQL = _HERE / "macros.sql"
SQL_FILES = [MACROS_SQL, VIEWS_SQL, _HERE / "runs.sql", _HERE / "frontier.sql"]

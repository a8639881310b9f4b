"""Results: SQL over the lake, materialised snapshots of the derived tables, the report.

* :mod:`mqepi.results.sql`: a DuckDB connection with the SQL contract loaded, export;
* :mod:`mqepi.results.snapshots`: the derived tables, recomputed incrementally;
* :mod:`mqepi.results.listing`: the lake's files by run and configuration, and their fingerprints;
* :mod:`mqepi.results.engine`: the DuckDB connection the snapshots compute with (views over file lists);
* :mod:`mqepi.results.report`: RQ1-RQ5, tables and figures.
"""

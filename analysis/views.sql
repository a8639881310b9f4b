-- mqepi SQL layer: one view per event type over the Parquet lake, for DuckDB.
--
-- Load it against any lake folder (the mqepi CLI does this for you):
--     duckdb -cmd "SET VARIABLE mqepi_lake = '/path/to/lake'" -cmd ".read analysis/views.sql"
-- or inside a session:
--     SET VARIABLE mqepi_lake = '/path/to/lake';
--     .read analysis/views.sql
--
-- Every base view:
--   * reads <lake>/<event_type>/<key>=<value>/.../*.parquet with hive partitioning; the
--     partition columns (model, config_id, run_id) come from the path, typed VARCHAR;
--   * unions files by column name, so files written by older schema versions still read;
--   * keeps one row per event_id (the earliest recorded), so a re-appended event counts once.
-- Temporary files (.tmp-*.partial) never match the *.parquet glob. Each folder holds a
-- zero-row seed file (model=_seed/...), written by `mqepi lake init`, so that every view
-- exists with its full column set even before the first event of its type.
-- Derived views (energy, accuracy, EPI, frontier) follow the base views.

-- ---------------------------------------------------------------- configs (model/config_id)

CREATE OR REPLACE VIEW quant_config AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/quant_config/model=*/config_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW quantization AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/quantization/model=*/config_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW tensor_inventory AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/tensor_inventory/model=*/config_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

-- ---------------------------------------------------------------- runs (model/config_id/run_id)

CREATE OR REPLACE VIEW run AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/run/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW phase AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/phase/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW power_sample AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/power_sample/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW thermal_sample AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/thermal_sample/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW benchmark_answer AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/benchmark_answer/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW perplexity AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/perplexity/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW kld AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/kld/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

CREATE OR REPLACE VIEW throughput AS
SELECT * FROM read_parquet(getvariable('mqepi_lake') || '/throughput/model=*/config_id=*/run_id=*/*.parquet',
    hive_partitioning = true, union_by_name = true,
    hive_types = {'model': 'VARCHAR', 'config_id': 'VARCHAR', 'run_id': 'VARCHAR'})
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

-- mqepi SQL macros shared by the analysis views. The contract's files load in this order into
-- one DuckDB connection: macros.sql, views.sql, runs.sql, frontier.sql.

-- ---------------------------------------------------------------- reading the lake
-- The events of one type, read by every base view of views.sql:
--   * the files: the DuckDB variable mqepi_files_<event_type> (VARCHAR[], absolute paths)
--     when it is set (mqepi.results.snapshots points the views at explicit file lists this
--     way), else the glob <mqepi_lake>/<event_type>/<partitions>/*.parquet;
--   * hive partitioning: the partition columns (model, config_id, run_id) come from the
--     path, typed VARCHAR (no autocast: a run_id of digits stays text);
--   * files unioned by column name, so files written by older schema versions still read;
--   * one row per event_id (the earliest recorded), so a re-appended event counts once.
CREATE OR REPLACE MACRO mqepi_events(event_type, partitions) AS TABLE
SELECT * FROM read_parquet(
    coalesce(getvariable('mqepi_files_' || event_type),
             [getvariable('mqepi_lake') || '/' || event_type || '/' || partitions || '/*.parquet']),
    hive_partitioning = true, hive_types_autocast = false, union_by_name = true)
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

-- The two lake layouts (mqepi.schemas: RUN_BOUND and CONFIG_BOUND event types).
CREATE OR REPLACE MACRO mqepi_config_events(event_type) AS TABLE
    FROM mqepi_events(event_type, 'model=*/config_id=*');
CREATE OR REPLACE MACRO mqepi_run_events(event_type) AS TABLE
    FROM mqepi_events(event_type, 'model=*/config_id=*/run_id=*');

-- ---------------------------------------------------------------- the seeded bootstrap
-- Its tunables with their defaults, checked: a value out of range fails the query with its
-- name and value.
CREATE OR REPLACE MACRO mqepi_bootstrap_seed() AS
    CASE WHEN CAST(coalesce(getvariable('mqepi_seed'), 1234) AS BIGINT) NOT BETWEEN 0 AND 2147483647
         THEN error('mqepi_seed must be in 0 .. 2147483647, got ' || getvariable('mqepi_seed'))
         ELSE CAST(coalesce(getvariable('mqepi_seed'), 1234) AS BIGINT) END;
CREATE OR REPLACE MACRO mqepi_bootstrap_resamples() AS
    CASE WHEN CAST(coalesce(getvariable('mqepi_bootstrap'), 1000) AS BIGINT) < 1
         THEN error('mqepi_bootstrap must be >= 1, got ' || getvariable('mqepi_bootstrap'))
         ELSE CAST(coalesce(getvariable('mqepi_bootstrap'), 1000) AS BIGINT) END;

-- The bootstrap's item index of draw j of resample b among n items (BIGINT arithmetic,
-- docs/analysis.md): two MINSTD steps, each followed by an xor-shift (without it the draws
-- follow a lattice: for n = 3 only 9 of the 27 resamples occur).
CREATE OR REPLACE MACRO mqepi_bootstrap_step(x) AS
    xor((CAST(x AS BIGINT) * 48271) % 2147483647, ((CAST(x AS BIGINT) * 48271) % 2147483647) >> 13);
CREATE OR REPLACE MACRO mqepi_bootstrap_index(seed, b, j, n) AS
    mqepi_bootstrap_step(mqepi_bootstrap_step(
        (CAST(seed AS BIGINT) * 1000003 + CAST(b AS BIGINT) * 10007 + CAST(j AS BIGINT) * 101) % 2147483647))
    % CAST(n AS BIGINT);

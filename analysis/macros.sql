-- mqepi SQL macros shared by the analysis views. The contract's files load in this order into
-- one DuckDB connection: macros.sql, views.sql, runs.sql, frontier.sql.

-- ---------------------------------------------------------------- reading the lake
-- The events of one type, read by every base view of views.sql:
--   * the files: the DuckDB variable mqepi_files_<event_type> (VARCHAR[], absolute paths or
--     URIs), the active files of the type's Delta table as its log names them
--     (mqepi.results.sql.connect sets them; docs/sql.md shows how by hand). Never a folder
--     glob: a Delta table's folder also holds files of old versions and of interrupted writes;
--   * hive partitioning: the partition columns (model, config_id) come from the path, typed
--     VARCHAR (no autocast); run_id is a column inside the files;
--   * files unioned by column name, so files written by older schema versions still read;
--   * one row per event_id (the earliest recorded), so a re-appended event counts once.
CREATE OR REPLACE MACRO mqepi_events(event_type) AS TABLE
SELECT * FROM read_parquet(
    coalesce(getvariable('mqepi_files_' || event_type),
             error('set the DuckDB variable mqepi_files_' || event_type || ' to the active files of the '
                   || event_type || ' table (docs/sql.md)')::VARCHAR[]),
    hive_partitioning = true, hive_types_autocast = false, union_by_name = true)
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY recorded_at_ns) = 1;

-- The two kinds of event (mqepi.schemas: RUN_BOUND and CONFIG_BOUND event types); both are
-- partitioned by model/config_id.
CREATE OR REPLACE MACRO mqepi_config_events(event_type) AS TABLE FROM mqepi_events(event_type);
CREATE OR REPLACE MACRO mqepi_run_events(event_type) AS TABLE FROM mqepi_events(event_type);

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

-- The draw of stream s (docs/analysis.md, "Uncertainty"): stream 0 is the scheme above (the
-- repeats); 1, 2, 3 draw the questions of mmlu, arc_challenge, hellaswag; 101 and 102 the
-- two uniforms of the meter's noise. Distinct streams start from distinct seeds.
CREATE OR REPLACE MACRO mqepi_bootstrap_draw(seed, stream, b, j, n) AS
    mqepi_bootstrap_step(mqepi_bootstrap_step(
        (CAST(seed AS BIGINT) * 1000003 + CAST(stream AS BIGINT) * 999999937 + CAST(b AS BIGINT) * 10007
         + CAST(j AS BIGINT) * 101) % 2147483647))
    % CAST(n AS BIGINT);
CREATE OR REPLACE MACRO mqepi_bootstrap_index(seed, b, j, n) AS mqepi_bootstrap_draw(seed, 0, b, j, n);
-- The stream of a benchmark's questions.
CREATE OR REPLACE MACRO mqepi_question_stream(benchmark) AS
    list_position(['mmlu', 'arc_challenge', 'hellaswag'], benchmark);
-- A run's item key for the meter's noise: the first 28 bits of md5('model/config_id/run_id').
CREATE OR REPLACE MACRO mqepi_run_hash(run_key) AS CAST(('0x' || left(md5(run_key), 7)) AS BIGINT);
-- A standard normal deviate per (seed, resample b, item key h): Box-Muller on the uniforms
-- (x + 0.5) / 2147483647 of streams 101 and 102.
CREATE OR REPLACE MACRO mqepi_bootstrap_normal(seed, b, h) AS
    sqrt(-2.0 * ln((mqepi_bootstrap_draw(seed, 101, b, h, 2147483647) + 0.5) / 2147483647.0))
    * cos(2.0 * pi() * ((mqepi_bootstrap_draw(seed, 102, b, h, 2147483647) + 0.5) / 2147483647.0));

-- An EPI at or above 1e200 stands for +Infinity: a run's EPI in a resample where its accuracy
-- is 0 is carried as 1e300 so that medians and linear quantiles stay finite arithmetic
-- (Infinity - Infinity would be NaN); any statistic reaching 1e200 came from it.
CREATE OR REPLACE MACRO mqepi_infinite(x) AS x >= 1e200;
CREATE OR REPLACE MACRO mqepi_unbounded(x) AS CASE WHEN x >= 1e200 THEN CAST('Infinity' AS DOUBLE) ELSE x END;

-- ---------------------------------------------------------------- Student's t
-- The 95 % quantile of Student's t with df degrees of freedom (the two one-sided tests at
-- 5 % of an equivalence test, i.e. a 90 % interval): scipy.stats.t.ppf(0.95, df) to 12
-- decimals for df 1..100 (tests/test_uncertainty.py checks them), above that the
-- Cornish-Fisher expansion to 1/df^4 (error < 2e-11 for df > 100). NULL for df < 1.
CREATE OR REPLACE MACRO mqepi_t95_cornish_fisher(v, z) AS
    z + (z * z * z + z) / (4 * v)
      + (5 * pow(z, 5) + 16 * pow(z, 3) + 3 * z) / (96 * v * v)
      + (3 * pow(z, 7) + 19 * pow(z, 5) + 17 * pow(z, 3) - 15 * z) / (384 * pow(v, 3))
      + (79 * pow(z, 9) + 776 * pow(z, 7) + 1482 * pow(z, 5) - 1920 * pow(z, 3) - 945 * z) / (92160 * pow(v, 4));
CREATE OR REPLACE MACRO mqepi_t95(df) AS
    CASE WHEN df < 1 OR df IS NULL THEN NULL
         WHEN df <= 100 THEN [
     6.313751514675, 2.919985580354, 2.353363434802, 2.131846786327, 2.015048373333,
     1.943180280515, 1.894578605090, 1.859548037531, 1.833112932656, 1.812461122812,
     1.795884818704, 1.782287555649, 1.770933395987, 1.761310135775, 1.753050355693,
     1.745883676276, 1.739606726075, 1.734063606618, 1.729132811521, 1.724718242921,
     1.720742902812, 1.717144374380, 1.713871527747, 1.710882079909, 1.708140761252,
     1.705617919759, 1.703288445722, 1.701130934266, 1.699127026533, 1.697260886594,
     1.695518782546, 1.693888748384, 1.692360309030, 1.690924255187, 1.689572457780,
     1.688297714117, 1.687093619596, 1.685954460167, 1.684875121711, 1.683851013336,
     1.682878002133, 1.681952357468, 1.681070703203, 1.680229976572, 1.679427392652,
     1.678660413557, 1.677926721642, 1.677224196124, 1.676550892617, 1.675905025163,
     1.675284950425, 1.674689153726, 1.674116236703, 1.673564906352, 1.673033965290,
     1.672522303076, 1.672028888461, 1.671552762455, 1.671093032104, 1.670648864905,
     1.670219483774, 1.669804162512, 1.669402221707, 1.669013025024, 1.668635975848,
     1.668270514228, 1.667916114107, 1.667572280797, 1.667238548669, 1.666914479056,
     1.666599658329, 1.666293696132, 1.665996223771, 1.665706892734, 1.665425373323,
     1.665151353405, 1.664884537258, 1.664624644507, 1.664371409137, 1.664124578590,
     1.663883912923, 1.663649184029, 1.663420174919, 1.663196679049, 1.662978499702,
     1.662765449409, 1.662557349413, 1.662354029167, 1.662155325870, 1.661961084030,
     1.661771155062, 1.661585396903, 1.661403673665, 1.661225855297, 1.661051817277,
     1.660881440325, 1.660714610123, 1.660551217066, 1.660391156017, 1.660234326085
         ][CAST(df AS INTEGER)]
         ELSE mqepi_t95_cornish_fisher(CAST(df AS DOUBLE), CAST(1.6448536269514722 AS DOUBLE))
    END;

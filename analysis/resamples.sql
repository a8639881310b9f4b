-- mqepi SQL layer, part 4: the hierarchical bootstrap's table macros, shared by
-- config_summary (summary.sql), matched_pairs and pareto_frontier (frontier.sql). Load after
-- runs.sql (they read run_metrics, config_identity and benchmark_answer, bound when loaded).
-- analysis/hierarchical.py draws the same resamples in numpy.

-- ---------------------------------------------------------------- the hierarchical bootstrap
-- docs/analysis.md, "Uncertainty". A family is (model, origin, power_source, hardware_id); a configuration
-- is an effective model of it (config_identity.canonical_id). Resample b = 1..B draws, at once:
--   * the repeats of each configuration: its valid runs, ordered by (repeat, run_id), are items
--     i = 0..n-1; draw j takes item mqepi_bootstrap_draw(seed, 0, b, j, n);
--   * the questions of each benchmark, once for the whole family (every configuration answers
--     the same questions): the distinct (question_set_sha256, question_id) answered by the
--     family's valid runs, ordered, are items q = 0..m-1; draw j takes
--     mqepi_bootstrap_draw(seed, mqepi_question_stream(benchmark), b, j, m);
--   * the meter: each valid run's benchmark energy moves by benchmark_energy_uncertainty_j times
--     mqepi_bootstrap_normal(seed, b, mqepi_run_hash(run_key)).
-- A run's accuracy in resample b: per benchmark it answered, its correct answers over its
-- answers, each question counted as often as it was drawn; composite: the mean over those
-- benchmarks (NULL when a benchmark has no drawn question). Its J/token: the moved energy over
-- its tokens; its EPI: J/token / accuracy, and infinite where the resampled accuracy is 0 (a
-- resample without a right answer is the worst EPI, not a missing one): carried as 1e300, and
-- any statistic >= 1e200 (mqepi_infinite) is +Infinity. A configuration's statistic in
-- resample b: the median over its drawn repeats of its runs' values in that resample.

-- The items: every valid run with its family g, configuration key ckey and item index i.
CREATE OR REPLACE MACRO mqepi_boot_items() AS TABLE
SELECT *, row_number() OVER (PARTITION BY ckey ORDER BY "repeat", run_id) - 1 AS i,
    count(*) OVER (PARTITION BY ckey) AS n
FROM (
    SELECT concat_ws('/', r.model, r.origin, r.power_source, r.hardware_id) AS g,
        concat_ws('/', r.model, r.origin, r.power_source, r.hardware_id, coalesce(ci.canonical_id, r.config_id)) AS ckey,
        r.model, r.origin, r.power_source, r.hardware_id, coalesce(ci.canonical_id, r.config_id) AS config_id,
        r.config_id AS measured_as, r."repeat", r.run_id, concat_ws('/', r.model, r.config_id, r.run_id) AS run_key,
        r.benchmark_energy_j, r.benchmark_energy_uncertainty_j, r.benchmark_tokens, r.j_per_token, r.accuracy, r.epi
    FROM run_metrics r
    LEFT JOIN config_identity ci
        ON concat_ws('/', ci.model, ci.origin, ci.config_id) = concat_ws('/', r.model, r.origin, r.config_id)
    WHERE r.valid);

-- One row per item run and resample b = 1..B: its J/token, accuracy and EPI in that resample.
CREATE OR REPLACE MACRO mqepi_run_resamples() AS TABLE
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot
), items AS MATERIALIZED (
    SELECT * FROM mqepi_boot_items()
), answered AS (  -- per item run, benchmark and question: its answers and correct answers
    SELECT it.g, it.run_key, a.benchmark, a.question_set_sha256 || '/' || a.question_id AS qkey,
        count(*) AS n_answers, count(*) FILTER (WHERE a.correct) AS n_correct
    FROM benchmark_answer a JOIN items it ON it.run_key = concat_ws('/', a.model, a.config_id, a.run_id)
    GROUP BY ALL
), universe AS (  -- per family and benchmark: its questions q = 1..m
    SELECT g, benchmark, qkey, row_number() OVER (PARTITION BY g, benchmark ORDER BY qkey) AS q,
        count(*) OVER (PARTITION BY g, benchmark) AS m
    FROM (SELECT DISTINCT g, benchmark, qkey FROM answered)
), ans AS (  -- per item run and benchmark it answered: its answers to q = 1..m
    SELECT rb.g, rb.run_key, rb.benchmark, any_value(u.m) AS m,
        list(CAST(coalesce(a.n_correct, 0) AS DOUBLE) ORDER BY u.q) AS correct,
        list(CAST(coalesce(a.n_answers, 0) AS DOUBLE) ORDER BY u.q) AS answered
    FROM (SELECT DISTINCT g, run_key, benchmark FROM answered) rb
    JOIN universe u ON u.g = rb.g AND u.benchmark = rb.benchmark
    LEFT JOIN answered a ON a.run_key = rb.run_key AND a.benchmark = rb.benchmark AND a.qkey = u.qkey
    GROUP BY rb.g, rb.run_key, rb.benchmark
), benchmarks AS (  -- per family: its benchmarks, in name order
    SELECT g, list(DISTINCT benchmark ORDER BY benchmark) AS names FROM ans GROUP BY g
), run_answers AS MATERIALIZED (  -- per item run: its benchmarks (positions in the family's), answers
    SELECT a.g, a.run_key, list(list_position(f.names, a.benchmark) ORDER BY a.benchmark) AS pos,
        list(a.correct ORDER BY a.benchmark) AS correct, list(a.answered ORDER BY a.benchmark) AS answered
    FROM ans a JOIN benchmarks f USING (g) GROUP BY a.g, a.run_key
), picks AS (  -- draw j of resample b of a family's questions of one benchmark: position 1..m
    SELECT u.g, u.benchmark, u.m, bb.b,
        unnest(list_transform(range(u.m), lambda j:
            mqepi_bootstrap_draw(p.seed, mqepi_question_stream(u.benchmark), bb.b, j, u.m) + 1)) AS pick
    FROM (SELECT DISTINCT g, benchmark, m FROM ans) u
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
), weights AS MATERIALIZED (  -- per family and resample b: per benchmark, how often q = 1..m was drawn
    SELECT g, b, list(list_transform(range(1, m + 1), lambda q: CAST(coalesce(h[q], 0) AS DOUBLE)) ORDER BY benchmark) AS w
    FROM (SELECT g, benchmark, b, any_value(m) AS m, histogram(pick) AS h FROM picks GROUP BY g, benchmark, b)
    GROUP BY g, b
), moved AS (  -- per item run and resample b: its J/token, and its accuracy per benchmark answered
    -- (the correct answers drawn over the answers drawn: counts x draws, exact in DOUBLE)
    SELECT it.*, bb.b,
        (it.benchmark_energy_j + coalesce(it.benchmark_energy_uncertainty_j, 0.0)
            * mqepi_bootstrap_normal(p.seed, bb.b, mqepi_run_hash(it.run_key))) / nullif(it.benchmark_tokens, 0) AS jpt,
        list_transform(range(1, len(ra.pos) + 1), lambda k:
            list_inner_product(d.w[ra.pos[k]], ra.correct[k]) / nullif(list_inner_product(d.w[ra.pos[k]], ra.answered[k]), 0))
            AS accs
    FROM items it
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
    LEFT JOIN run_answers ra ON ra.run_key = it.run_key
    LEFT JOIN weights d ON d.g = ra.g AND d.b = bb.b
), scored AS (  -- composite: the mean over the run's benchmarks in name order (NULL when one is NULL)
    SELECT * EXCLUDE (accs), CASE WHEN len(accs) > 0 AND list_count(accs) = len(accs) THEN list_avg(accs) END AS acc_b
    FROM moved
)
SELECT m.g, m.ckey, m.i, m.n, m.run_key, m."repeat", m.run_id, m.b, m.jpt AS j_per_token, m.acc_b AS accuracy,
    CASE WHEN m.jpt IS NULL OR m.acc_b IS NULL THEN NULL
         WHEN m.acc_b = 0 THEN 1e300  -- infinite EPI (mqepi_infinite), not left out
         ELSE m.jpt / m.acc_b END AS epi
FROM scored m;

-- One row per configuration (ckey) and resample b: the medians over its drawn repeats.
CREATE OR REPLACE MACRO mqepi_config_resamples() AS TABLE
WITH rr AS MATERIALIZED (
    SELECT * FROM mqepi_run_resamples()
), draws AS (
    SELECT nj.n, bb.b, mqepi_bootstrap_draw(mqepi_bootstrap_seed(), 0, bb.b, nj.j, nj.n) AS i
    FROM (SELECT n, unnest(range(n)) AS j FROM (SELECT DISTINCT n FROM rr)) nj
    CROSS JOIN (SELECT unnest(range(1, mqepi_bootstrap_resamples() + 1)) AS b) bb
)
SELECT rr.g, rr.ckey, rr.b, median(rr.j_per_token) AS j_per_token, median(rr.accuracy) AS accuracy,
    median(rr.epi) AS epi
FROM rr JOIN draws d ON d.n = rr.n AND d.b = rr.b AND d.i = rr.i
GROUP BY rr.g, rr.ckey, rr.b;

-- An interval over resample statistics, or NULL where it is degenerate: every resample gave
-- the same value (max - min <= 1e-12 x max(1, |max|)), so the bootstrap cannot estimate it.
CREATE OR REPLACE MACRO mqepi_degenerate(lo, hi) AS hi - lo <= 1e-12 * greatest(1.0, abs(hi));


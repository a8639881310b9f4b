-- mqepi SQL layer, part 2: per-run results. Load after macros.sql and views.sql:
--     SET VARIABLE mqepi_lake = '/path/to/lake';
--     .read analysis/macros.sql
--     .read analysis/views.sql
--     .read analysis/runs.sql
--
-- Views: run_energy (run x phase window), run_accuracy (run x benchmark, plus 'composite'),
-- run_metrics (finished run), config_summary (model x config x origin x power source).
-- docs/analysis.md explains every column; analysis/twin_runs.py computes the same in Polars
-- (tests compare both).
--
-- Common rules:
--   * A run's status: 'failed' if it has a failed event, else 'finished' if it has a finished
--     event, else 'started' (unfinished). Its origin, repeat, power_source and file_sha256 come
--     from its started event (the earliest recorded; without one, its earliest run event).
--   * Every view carries origin ('lab' or 'community/<slug>'); every group-by over runs
--     includes it: lab and community results are never pooled.
--   * simulated: the run's power_source is 'simulated', or a window's samples say simulated.
--     Simulated numbers are not measurements.
--   * Benchmarks: windows named mmlu, arc_challenge, hellaswag. Idle: idle_baseline.
--     pp = prefill, tg = decode.
--   * Sums and means of DOUBLEs here are ordered aggregates (sum(x ORDER BY ...)): a parallel
--     sum adds in a varying order and varies in the last bit from query to query.
--
-- Tunables (DuckDB variables, SET VARIABLE name = value; defaults in brackets):
--   mqepi_z          [1.96]  z of the Wilson intervals in run_accuracy
--   mqepi_seed       [1234]  seed of the bootstrap in config_summary (0 .. 2147483647)
--   mqepi_bootstrap  [1000]  bootstrap resamples in config_summary (>= 1)
--
-- Joins between results of the base views use one composite key (run_key =
-- 'model/config_id/run_id', config_key = 'model/config_id'), never the bare partition
-- columns: DuckDB 2.0 pushes a join's keys as runtime filters into the Parquet scans of the
-- base views, which prunes their hive partitions and renumbers file_index under the
-- one-row-per-event_id de-duplication (duckdb/duckdb#26044), silently losing events (seen:
-- the first run of a lake dropped from a join on (model, config_id, run_id)). A key computed
-- by an expression is not pushed into the scans; filters in a query's WHERE still are.

-- ---------------------------------------------------------------- run_energy
-- One row per run and phase window (every window of window_energy_total, none dropped).
--   model, config_id, run_id, origin     the run (origin from its run events, else the phase's)
--   repeat                              repeat number of the run (INTEGER)
--   run_status                          'started' | 'finished' | 'failed' (NULL: no run event)
--   power_source                        run.power_source of the started event
--   simulated                           power_source = 'simulated' or samples simulated
--   phase, node                         the window's name and node (NULL = the whole cluster)
--   window_kind                         'idle' | 'benchmark' | 'perplexity' | 'kld' | 'prefill'
--                                       | 'decode' | 'other'
--   start_ns, end_ns                    window, host UTC ns
--   elapsed_s                           s
--   energy_j                            gross energy of the window's channels, J
--   net_energy_j                        gross - idle_power_w x elapsed_s, J (NULL: no idle)
--   idle_power_w                        idle power subtracted for the net, W (sum over channels)
--   avg_power_w                         energy_j / elapsed_s, W
--   energy_uncertainty_j                one standard uncertainty of energy_j, J
--   tokens                              tokens of the window (window_energy_total.tokens)
--   j_per_token, net_j_per_token        J/token
--   coverage                            share of the window with samples (worst channel), 0..1
--   valid, invalid_reasons              the window's validity gates (docs/meter.md)

CREATE OR REPLACE VIEW run_energy AS
WITH runs AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        first(origin ORDER BY status <> 'started', recorded_at_ns, event_id) AS origin,
        first("repeat" ORDER BY status <> 'started', recorded_at_ns, event_id) AS "repeat",
        first(power_source ORDER BY status <> 'started', recorded_at_ns, event_id) AS power_source,
        CASE WHEN bool_or(status = 'failed') THEN 'failed'
             WHEN bool_or(status = 'finished') THEN 'finished' ELSE 'started' END AS run_status
    FROM run GROUP BY model, config_id, run_id
), phase_origin AS (  -- for windows of a run without run events
    SELECT concat_ws('/', model, config_id, run_id) AS run_key, first(origin ORDER BY recorded_at_ns, event_id) AS origin
    FROM phase GROUP BY model, config_id, run_id
), windows AS (
    SELECT *, concat_ws('/', model, config_id, run_id) AS run_key FROM window_energy_total
)
SELECT w.model, w.config_id, w.run_id, coalesce(r.origin, p.origin) AS origin, r."repeat", r.run_status,
    r.power_source, coalesce(r.power_source = 'simulated', false) OR w.simulated AS simulated,
    w.phase,
    CASE WHEN w.phase = 'idle_baseline' THEN 'idle'
         WHEN w.phase IN ('mmlu', 'arc_challenge', 'hellaswag') THEN 'benchmark'
         WHEN w.phase = 'perplexity' THEN 'perplexity'
         WHEN w.phase = 'kld' THEN 'kld'
         WHEN w.phase = 'pp' THEN 'prefill'
         WHEN w.phase = 'tg' THEN 'decode'
         ELSE 'other' END AS window_kind,
    w.node, w.start_ns, w.end_ns, w.elapsed_s, w.energy_j, w.net_energy_j,
    (w.energy_j - w.net_energy_j) / nullif(w.elapsed_s, 0) AS idle_power_w,
    w.avg_power_w, w.energy_uncertainty_j, w.tokens, w.j_per_token, w.net_j_per_token, w.coverage,
    w.valid, w.invalid_reasons
FROM windows w
LEFT JOIN phase_origin p ON p.run_key = w.run_key
LEFT JOIN runs r ON r.run_key = w.run_key;

-- ---------------------------------------------------------------- run_accuracy
-- One row per run and benchmark answered, plus one row benchmark = 'composite' per run.
--   model, config_id, run_id, origin, repeat   the run (origin from its run events, else the answers')
--   benchmark                  'mmlu' | 'arc_challenge' | 'hellaswag' | 'composite'
--   question_set_sha256        the question set (several: sorted, comma-separated; composite: NULL)
--   n_questions, n_correct     answers and correct answers (composite: sums over its benchmarks)
--   accuracy                   n_correct / n_questions; composite: the mean of the run's
--                              benchmark accuracies (each benchmark weighs the same)
--   accuracy_ci_low/high       Wilson score interval with z = mqepi_z (default 1.96, 95 %);
--                              composite: the mean of the benchmarks' Wilson bounds (the interval
--                              if the benchmarks' errors were fully correlated: conservative)
CREATE OR REPLACE VIEW run_accuracy AS
WITH runs AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        first(origin ORDER BY status <> 'started', recorded_at_ns, event_id) AS origin,
        first("repeat" ORDER BY status <> 'started', recorded_at_ns, event_id) AS "repeat"
    FROM run GROUP BY model, config_id, run_id
), z AS (
    SELECT CAST(coalesce(getvariable('mqepi_z'), 1.96) AS DOUBLE) AS z
), per_benchmark AS (
    SELECT model, config_id, run_id, benchmark, first(origin ORDER BY recorded_at_ns, event_id) AS answer_origin,
        string_agg(DISTINCT question_set_sha256, ',' ORDER BY question_set_sha256) AS question_set_sha256,
        count(*) AS n_questions, count(*) FILTER (WHERE correct) AS n_correct
    FROM benchmark_answer GROUP BY model, config_id, run_id, benchmark
), wilson AS (
    SELECT b.*, b.n_correct / b.n_questions AS accuracy,
        greatest(0.0, (b.n_correct / b.n_questions + z.z * z.z / (2 * b.n_questions)) / (1 + z.z * z.z / b.n_questions)
            - z.z * sqrt((b.n_correct / b.n_questions) * (1 - b.n_correct / b.n_questions) / b.n_questions
                         + z.z * z.z / (4.0 * b.n_questions * b.n_questions)) / (1 + z.z * z.z / b.n_questions)) AS accuracy_ci_low,
        least(1.0, (b.n_correct / b.n_questions + z.z * z.z / (2 * b.n_questions)) / (1 + z.z * z.z / b.n_questions)
            + z.z * sqrt((b.n_correct / b.n_questions) * (1 - b.n_correct / b.n_questions) / b.n_questions
                         + z.z * z.z / (4.0 * b.n_questions * b.n_questions)) / (1 + z.z * z.z / b.n_questions)) AS accuracy_ci_high
    FROM per_benchmark b, z
), rows AS (
    SELECT model, config_id, run_id, answer_origin, benchmark, question_set_sha256, n_questions, n_correct,
        accuracy, accuracy_ci_low, accuracy_ci_high
    FROM wilson
    UNION ALL
    SELECT model, config_id, run_id, first(answer_origin ORDER BY benchmark), 'composite', NULL,
        sum(n_questions), sum(n_correct), avg(accuracy ORDER BY benchmark), avg(accuracy_ci_low ORDER BY benchmark),
        avg(accuracy_ci_high ORDER BY benchmark)
    FROM wilson GROUP BY model, config_id, run_id
)
SELECT a.model, a.config_id, a.run_id, coalesce(r.origin, a.answer_origin) AS origin, r."repeat", a.benchmark,
    a.question_set_sha256, CAST(a.n_questions AS BIGINT) AS n_questions, CAST(a.n_correct AS BIGINT) AS n_correct,
    a.accuracy, a.accuracy_ci_low, a.accuracy_ci_high
FROM rows a
LEFT JOIN runs r ON r.run_key = concat_ws('/', a.model, a.config_id, a.run_id);

-- ---------------------------------------------------------------- run_metrics
-- One row per FINISHED run (a finished event and no failed event).
--   model, config_id, run_id, origin, repeat, power_source, simulated   the run
--   valid                  every benchmark window valid, and at least one
--   n_benchmarks           benchmarks in the composite accuracy (answered)
--   benchmark_energy_j     sum of energy_j over the benchmark windows, J (NULL if one lacks energy)
--   benchmark_energy_uncertainty_j
--                          one standard uncertainty of benchmark_energy_j: root sum of squares of
--                          the windows' energy_uncertainty_j, J
--   benchmark_tokens       sum of their tokens (NULL if one lacks tokens)
--   j_per_token            benchmark_energy_j / benchmark_tokens, J/token
--   net_j_per_token        the same with net energy, J/token
--   prefill_j_per_token    energy / tokens of the pp windows, J/token
--   decode_j_per_token     energy / tokens of the tg windows, J/token
--   accuracy               composite accuracy (run_accuracy), 0..1
--   epi                    j_per_token / accuracy, J/token per unit accuracy (NULL if accuracy = 0)
--   epi_mmlu, epi_arc_challenge, epi_hellaswag
--                          that benchmark's windows' J/token / that benchmark's accuracy
--   ppl, ppl_stderr        the run's perplexity event (the latest recorded)
--   kld_mean, same_top_p   the run's kld event (the latest recorded)
--   file_size_bytes, bits_per_weight
--                          the quantization of the run's file (file_sha256; without one, the
--                          config's latest quantization, of the run's origin first)
--   prefill_tokens_per_s, decode_tokens_per_s
--                          throughput pp / tg (the latest recorded of each), tokens/s
--   avg_power_w            benchmark_energy_j / elapsed s of the benchmark windows, W
--   idle_power_w           idle power subtracted from the benchmark windows, time-weighted, W
--   invalid_reasons        '<phase>: <reasons>' of each invalid benchmark window; NULL if valid
-- The all-or-none sum over the run_energy rows where cond: NULL when one of them has x NULL
-- (or no row matches), else sum(x) in window order (an ordered sum: see the common rules).
CREATE OR REPLACE MACRO mqepi_window_sum(x, cond) AS
    CASE WHEN count(x) FILTER (WHERE cond) = count(*) FILTER (WHERE cond)
         THEN sum(x ORDER BY start_ns, phase, node) FILTER (WHERE cond) END;

CREATE OR REPLACE VIEW run_metrics AS
WITH runs AS (
    SELECT model, config_id, run_id, concat_ws('/', model, config_id, run_id) AS run_key,
        concat_ws('/', model, config_id) AS config_key,
        first(origin ORDER BY status <> 'started', recorded_at_ns, event_id) AS origin,
        first("repeat" ORDER BY status <> 'started', recorded_at_ns, event_id) AS "repeat",
        first(power_source ORDER BY status <> 'started', recorded_at_ns, event_id) AS power_source,
        first(file_sha256 ORDER BY status <> 'started', recorded_at_ns, event_id) AS file_sha256
    FROM run GROUP BY model, config_id, run_id
    HAVING bool_or(status = 'finished') AND NOT bool_or(status = 'failed')
), windows AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        count(*) FILTER (WHERE window_kind = 'benchmark') AS n_windows,
        coalesce(bool_and(valid) FILTER (WHERE window_kind = 'benchmark'), false) AS all_valid,
        coalesce(bool_or(simulated) FILTER (WHERE window_kind = 'benchmark'), false) AS simulated,
        mqepi_window_sum(energy_j, window_kind = 'benchmark') AS energy_j,
        sqrt(mqepi_window_sum(energy_uncertainty_j * energy_uncertainty_j, window_kind = 'benchmark')) AS energy_uncertainty_j,
        mqepi_window_sum(net_energy_j, window_kind = 'benchmark') AS net_energy_j,
        mqepi_window_sum(tokens, window_kind = 'benchmark') AS tokens,
        sum(elapsed_s ORDER BY start_ns, phase, node) FILTER (WHERE window_kind = 'benchmark') AS elapsed_s,
        -- per benchmark, prefill and decode: energy / tokens over the windows of that name
        mqepi_window_sum(energy_j, phase = 'mmlu') / nullif(mqepi_window_sum(tokens, phase = 'mmlu'), 0) AS jpt_mmlu,
        mqepi_window_sum(energy_j, phase = 'arc_challenge')
            / nullif(mqepi_window_sum(tokens, phase = 'arc_challenge'), 0) AS jpt_arc_challenge,
        mqepi_window_sum(energy_j, phase = 'hellaswag')
            / nullif(mqepi_window_sum(tokens, phase = 'hellaswag'), 0) AS jpt_hellaswag,
        mqepi_window_sum(energy_j, window_kind = 'prefill')
            / nullif(mqepi_window_sum(tokens, window_kind = 'prefill'), 0) AS prefill_j_per_token,
        mqepi_window_sum(energy_j, window_kind = 'decode')
            / nullif(mqepi_window_sum(tokens, window_kind = 'decode'), 0) AS decode_j_per_token,
        string_agg(phase || ': ' || coalesce(invalid_reasons, 'invalid'), '; ' ORDER BY start_ns, phase, node)
            FILTER (WHERE window_kind = 'benchmark' AND NOT valid) AS window_reasons
    FROM run_energy GROUP BY model, config_id, run_id
), accuracy AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        count(*) FILTER (WHERE benchmark <> 'composite') AS n_benchmarks,
        any_value(accuracy) FILTER (WHERE benchmark = 'composite') AS accuracy,
        any_value(accuracy) FILTER (WHERE benchmark = 'mmlu') AS acc_mmlu,
        any_value(accuracy) FILTER (WHERE benchmark = 'arc_challenge') AS acc_arc_challenge,
        any_value(accuracy) FILTER (WHERE benchmark = 'hellaswag') AS acc_hellaswag
    FROM run_accuracy GROUP BY model, config_id, run_id
), ppl AS (  -- the latest recorded event of each kind (then the greatest event_id)
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        arg_max({'ppl': ppl, 'ppl_stderr': ppl_stderr}, {'t': recorded_at_ns, 'e': event_id}) AS v
    FROM perplexity GROUP BY model, config_id, run_id
), kl AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        arg_max({'kld_mean': kld_mean, 'same_top_p': same_top_p}, {'t': recorded_at_ns, 'e': event_id}) AS v
    FROM kld GROUP BY model, config_id, run_id
), tput AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        arg_max(tokens_per_s, {'t': recorded_at_ns, 'e': event_id}) FILTER (WHERE test = 'pp') AS prefill_tokens_per_s,
        arg_max(tokens_per_s, {'t': recorded_at_ns, 'e': event_id}) FILTER (WHERE test = 'tg') AS decode_tokens_per_s
    FROM throughput GROUP BY model, config_id, run_id
), quantizations AS (
    SELECT concat_ws('/', model, config_id) AS config_key, file_sha256, origin, recorded_at_ns, event_id,
        file_size_bytes, bits_per_weight
    FROM quantization
), quant AS (
    SELECT r.run_key,
        arg_max({'file_size_bytes': q.file_size_bytes, 'bits_per_weight': q.bits_per_weight},
                {'o': q.origin = r.origin, 't': q.recorded_at_ns, 'e': q.event_id}) AS v
    FROM runs r JOIN quantizations q ON q.config_key = r.config_key
        AND (r.file_sha256 IS NULL OR q.file_sha256 = r.file_sha256)
    GROUP BY r.run_key
)
SELECT r.model, r.config_id, r.run_id, r.origin, r."repeat", r.power_source,
    r.power_source = 'simulated' OR coalesce(w.simulated, false) AS simulated,
    coalesce(w.n_windows > 0 AND w.all_valid, false) AS valid,
    CAST(coalesce(a.n_benchmarks, 0) AS BIGINT) AS n_benchmarks,
    w.energy_j AS benchmark_energy_j, w.energy_uncertainty_j AS benchmark_energy_uncertainty_j,
    CAST(w.tokens AS BIGINT) AS benchmark_tokens,
    w.energy_j / nullif(w.tokens, 0) AS j_per_token,
    w.net_energy_j / nullif(w.tokens, 0) AS net_j_per_token,
    w.prefill_j_per_token, w.decode_j_per_token,
    a.accuracy,
    w.energy_j / nullif(w.tokens, 0) / nullif(a.accuracy, 0) AS epi,
    w.jpt_mmlu / nullif(a.acc_mmlu, 0) AS epi_mmlu,
    w.jpt_arc_challenge / nullif(a.acc_arc_challenge, 0) AS epi_arc_challenge,
    w.jpt_hellaswag / nullif(a.acc_hellaswag, 0) AS epi_hellaswag,
    p.v.ppl, p.v.ppl_stderr, k.v.kld_mean, k.v.same_top_p, q.v.file_size_bytes, q.v.bits_per_weight,
    t.prefill_tokens_per_s, t.decode_tokens_per_s,
    w.energy_j / nullif(w.elapsed_s, 0) AS avg_power_w,
    (w.energy_j - w.net_energy_j) / nullif(w.elapsed_s, 0) AS idle_power_w,
    CASE WHEN coalesce(w.n_windows, 0) = 0 THEN 'no benchmark window' ELSE w.window_reasons END AS invalid_reasons
FROM runs r
LEFT JOIN windows w ON w.run_key = r.run_key
LEFT JOIN accuracy a ON a.run_key = r.run_key
LEFT JOIN ppl p ON p.run_key = r.run_key
LEFT JOIN kl k ON k.run_key = r.run_key
LEFT JOIN tput t ON t.run_key = r.run_key
LEFT JOIN quant q ON q.run_key = r.run_key;

-- ---------------------------------------------------------------- config_identity
-- One row per (model, origin, config_id) with a quantization, a config_alias or a finished run:
-- which effective model the configuration is. Configurations of one origin whose latest
-- quantization or alias event names the same base and per-tensor types (base_sha256 and
-- effective_map_sha256) are one model: their runs are pooled, they are shown once and never
-- paired with each other.
--   model, origin, config_id   the configuration
--   effective_key              'base_sha256/effective_map_sha256' (NULL: no such event; then it
--                              is a model of its own)
--   canonical_id               the name its model is shown under: the smallest config_id of the
--                              model with a valid finished run, else the smallest
--   config_ids                 every config_id of the model, sorted
CREATE OR REPLACE VIEW config_identity AS
WITH keyed AS (
    SELECT concat_ws('/', model, origin, config_id) AS k, model, origin, config_id,
        base_sha256 || '/' || effective_map_sha256 AS effective_key, recorded_at_ns, event_id
    FROM quantization
    UNION ALL
    SELECT concat_ws('/', model, origin, config_id), model, origin, config_id,
        base_sha256 || '/' || effective_map_sha256, recorded_at_ns, event_id
    FROM config_alias
), latest AS (
    SELECT k, any_value(model) AS model, any_value(origin) AS origin, any_value(config_id) AS config_id,
        arg_max(effective_key, {'t': recorded_at_ns, 'e': event_id}) AS effective_key
    FROM keyed GROUP BY k
), ran AS (
    SELECT concat_ws('/', model, origin, config_id) AS k, any_value(model) AS model, any_value(origin) AS origin,
        any_value(config_id) AS config_id, bool_or(valid) AS measured
    FROM run_metrics GROUP BY ALL
), configs AS (
    SELECT coalesce(l.k, r.k) AS k, coalesce(l.model, r.model) AS model, coalesce(l.origin, r.origin) AS origin,
        coalesce(l.config_id, r.config_id) AS config_id, l.effective_key, coalesce(r.measured, false) AS measured
    FROM latest l FULL OUTER JOIN ran r ON r.k = l.k
), keyed_configs AS (
    SELECT *, concat_ws('/', model, origin, coalesce(effective_key, 'config:' || config_id)) AS model_key FROM configs
)
SELECT model, origin, config_id, effective_key,
    coalesce(min(CASE WHEN measured THEN config_id END) OVER w, min(config_id) OVER w) AS canonical_id,
    list_sort(list(config_id) OVER w) AS config_ids
FROM keyed_configs
WINDOW w AS (PARTITION BY model_key)
ORDER BY model, origin, config_id;

-- ---------------------------------------------------------------- the hierarchical bootstrap
-- docs/analysis.md, "Uncertainty". A family is (model, origin, power_source); a configuration
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
-- its tokens; its EPI: J/token / accuracy. A configuration's statistic in resample b: the
-- median over its drawn repeats of its runs' values in that resample.

-- The items: every valid run with its family g, configuration key ckey and item index i.
CREATE OR REPLACE MACRO mqepi_boot_items() AS TABLE
SELECT *, row_number() OVER (PARTITION BY ckey ORDER BY "repeat", run_id) - 1 AS i,
    count(*) OVER (PARTITION BY ckey) AS n
FROM (
    SELECT concat_ws('/', r.model, r.origin, r.power_source) AS g,
        concat_ws('/', r.model, r.origin, r.power_source, coalesce(ci.canonical_id, r.config_id)) AS ckey,
        r.model, r.origin, r.power_source, coalesce(ci.canonical_id, r.config_id) AS config_id,
        r.config_id AS measured_as, r."repeat", r.run_id, concat_ws('/', r.model, r.config_id, r.run_id) AS run_key,
        r.benchmark_energy_j, r.benchmark_energy_uncertainty_j, r.benchmark_tokens, r.j_per_token, r.accuracy, r.epi
    FROM run_metrics r
    LEFT JOIN config_identity ci
        ON concat_ws('/', ci.model, ci.origin, ci.config_id) = concat_ws('/', r.model, r.origin, r.config_id)
    WHERE r.valid);

-- Per item run and benchmark it answered: the family's question universe of that benchmark (m
-- questions) and, per question q = 1..m, the run's answers and correct answers to it.
CREATE OR REPLACE MACRO mqepi_boot_answers() AS TABLE
WITH items AS (
    SELECT g, run_key FROM mqepi_boot_items()
), ans AS (
    SELECT it.g, it.run_key, a.benchmark, a.question_set_sha256 || '/' || a.question_id AS qkey,
        count(*) AS n_answers, count(*) FILTER (WHERE a.correct) AS n_correct
    FROM benchmark_answer a JOIN items it ON it.run_key = concat_ws('/', a.model, a.config_id, a.run_id)
    GROUP BY ALL
), universe AS (
    SELECT g, benchmark, qkey, row_number() OVER (PARTITION BY g, benchmark ORDER BY qkey) AS q,
        count(*) OVER (PARTITION BY g, benchmark) AS m
    FROM (SELECT DISTINCT g, benchmark, qkey FROM ans)
), run_benchmarks AS (
    SELECT DISTINCT g, run_key, benchmark FROM ans
)
SELECT rb.g, rb.run_key, rb.benchmark, any_value(u.m) AS m,
    list(coalesce(a.n_correct, 0) ORDER BY u.q) AS correct,
    list(coalesce(a.n_answers, 0) ORDER BY u.q) AS answered
FROM run_benchmarks rb
JOIN universe u ON u.g = rb.g AND u.benchmark = rb.benchmark
LEFT JOIN ans a ON a.run_key = rb.run_key AND a.benchmark = rb.benchmark AND a.qkey = u.qkey
GROUP BY rb.g, rb.run_key, rb.benchmark;

-- One row per item run and resample b = 1..B: its J/token, accuracy and EPI in that resample.
CREATE OR REPLACE MACRO mqepi_run_resamples() AS TABLE
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot
), ans AS MATERIALIZED (
    SELECT * FROM mqepi_boot_answers()
), picks AS (  -- resample b of a family's questions of one benchmark: the 1-based positions drawn
    SELECT u.g, u.benchmark, bb.b,
        list_transform(range(u.m), lambda j:
            mqepi_bootstrap_draw(p.seed, mqepi_question_stream(u.benchmark), bb.b, j, u.m) + 1) AS pick
    FROM (SELECT DISTINCT g, benchmark, m FROM ans) u
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
), per_benchmark AS (
    SELECT a.run_key, d.b, a.benchmark,
        list_sum(list_select(a.correct, d.pick)) / nullif(list_sum(list_select(a.answered, d.pick)), 0) AS acc
    FROM ans a JOIN picks d ON d.g = a.g AND d.benchmark = a.benchmark
), per_run AS (
    SELECT run_key, b, CASE WHEN count(acc) = count(*) THEN avg(acc ORDER BY benchmark) END AS accuracy
    FROM per_benchmark GROUP BY run_key, b
), moved AS (
    SELECT it.*, bb.b,
        (it.benchmark_energy_j + coalesce(it.benchmark_energy_uncertainty_j, 0.0)
            * mqepi_bootstrap_normal(p.seed, bb.b, mqepi_run_hash(it.run_key))) / nullif(it.benchmark_tokens, 0) AS jpt
    FROM mqepi_boot_items() it
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
)
SELECT m.g, m.ckey, m.i, m.n, m.run_key, m."repeat", m.run_id, m.b, m.jpt AS j_per_token, r.accuracy,
    m.jpt / nullif(r.accuracy, 0) AS epi
FROM moved m LEFT JOIN per_run r ON r.run_key = m.run_key AND r.b = m.b;

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

-- ---------------------------------------------------------------- config_summary
-- One row per effective model (config_identity) and (model, origin, power_source) with at
-- least one finished run. Medians over the valid runs of all its names; NULL values are left
-- out.
--   model, config_id, origin, power_source    the group (lab and community never pooled);
--                          config_id is config_identity.canonical_id
--   config_ids             every name of this model (config_identity.config_ids), sorted
--   simulated              any of its finished runs simulated
--   kind                   'uniform' | 'mixed' (quant_config of the config, of the group's origin first)
--   early_type, middle_type, late_type
--                          quant type of the map's groups named early / middle / late
--                          (quant_config.map_json layer_groups[].name / .quant; NULL if absent)
--   n_repeats              valid runs used
--   n_excluded             finished runs not valid (failed and unfinished runs are not counted)
--   n_questions            distinct questions its valid runs answered (all benchmarks)
--   j_per_token, accuracy, epi (+ _ci_low, _ci_high)
--                          medians of the runs' values; 95 % percentile interval of the
--                          hierarchical bootstrap above (quantile_cont 0.025 / 0.975 of the B
--                          resample medians), NULL where degenerate (mqepi_degenerate);
--                          epi is the median of the runs' EPI, not a ratio of medians
--   interval_note          why an interval is missing or narrower than the data's variation
--                          ('; '-separated; NULL when every interval covers repeats, questions
--                          and the meter)
--   ppl, ppl_stderr, kld_mean, file_size_bytes, bits_per_weight, decode_tokens_per_s,
--   prefill_j_per_token, decode_j_per_token, avg_power_w
--                          medians over the valid runs (units as run_metrics)
CREATE OR REPLACE VIEW config_summary AS
WITH rm AS MATERIALIZED (
    SELECT r.*, coalesce(ci.canonical_id, r.config_id) AS canonical_id,
        coalesce(ci.config_ids, [r.config_id]) AS config_ids
    FROM run_metrics r
    LEFT JOIN config_identity ci
        ON concat_ws('/', ci.model, ci.origin, ci.config_id) = concat_ws('/', r.model, r.origin, r.config_id)
), summary AS (
    SELECT concat_ws('/', model, origin, power_source, canonical_id) AS ckey,
        model, canonical_id AS config_id, origin, power_source, any_value(config_ids) AS config_ids,
        bool_or(simulated) AS simulated,
        count(*) FILTER (WHERE valid) AS n_repeats, count(*) FILTER (WHERE NOT valid) AS n_excluded,
        median(j_per_token) FILTER (WHERE valid) AS j_per_token,
        median(accuracy) FILTER (WHERE valid) AS accuracy,
        median(epi) FILTER (WHERE valid) AS epi,
        median(ppl) FILTER (WHERE valid) AS ppl,
        median(ppl_stderr) FILTER (WHERE valid) AS ppl_stderr,
        median(kld_mean) FILTER (WHERE valid) AS kld_mean,
        median(file_size_bytes::DOUBLE) FILTER (WHERE valid) AS file_size_bytes,
        median(bits_per_weight) FILTER (WHERE valid) AS bits_per_weight,
        median(decode_tokens_per_s) FILTER (WHERE valid) AS decode_tokens_per_s,
        median(prefill_j_per_token) FILTER (WHERE valid) AS prefill_j_per_token,
        median(decode_j_per_token) FILTER (WHERE valid) AS decode_j_per_token,
        median(avg_power_w) FILTER (WHERE valid) AS avg_power_w,
        bool_or(valid AND benchmark_energy_uncertainty_j > 0) AS has_meter_uncertainty
    FROM rm GROUP BY model, canonical_id, origin, power_source
), questions AS (
    SELECT it.ckey, count(DISTINCT a.benchmark || '/' || a.question_set_sha256 || '/' || a.question_id) AS n_questions
    FROM benchmark_answer a
    JOIN (SELECT ckey, run_key FROM mqepi_boot_items()) it ON it.run_key = concat_ws('/', a.model, a.config_id, a.run_id)
    GROUP BY it.ckey
), bounds AS (
    SELECT ckey,
        quantile_cont(j_per_token, 0.025) AS jpt_lo, quantile_cont(j_per_token, 0.975) AS jpt_hi,
        min(j_per_token) AS jpt_min, max(j_per_token) AS jpt_max,
        quantile_cont(accuracy, 0.025) AS acc_lo, quantile_cont(accuracy, 0.975) AS acc_hi,
        min(accuracy) AS acc_min, max(accuracy) AS acc_max,
        quantile_cont(epi, 0.025) AS epi_lo, quantile_cont(epi, 0.975) AS epi_hi,
        min(epi) AS epi_min, max(epi) AS epi_max
    FROM mqepi_config_resamples() GROUP BY ckey
), configs AS (  -- the config's quant_config: of the group's origin first, then the latest
    SELECT s.ckey, arg_max({'kind': c.kind, 'map_json': c.map_json},
                           {'o': c.origin = s.origin, 't': c.recorded_at_ns, 'e': c.event_id}) AS v
    FROM summary s
    JOIN (SELECT *, concat_ws('/', model, config_id) AS config_key FROM quant_config) c
        ON c.config_key = concat_ws('/', s.model, s.config_id)
    GROUP BY s.ckey
), groups AS (
    SELECT ckey, try(from_json(json_extract(v.map_json, '$.layer_groups'), '[{"name": "VARCHAR", "quant": "VARCHAR"}]')) AS layer_groups
    FROM configs WHERE json_valid(v.map_json)
), joined AS (
    SELECT s.*, coalesce(q.n_questions, 0) AS n_questions, b.*,
        b.acc_min IS NOT NULL AND mqepi_degenerate(b.acc_min, b.acc_max) AS acc_flat,
        b.jpt_min IS NOT NULL AND mqepi_degenerate(b.jpt_min, b.jpt_max) AS jpt_flat,
        b.epi_min IS NOT NULL AND mqepi_degenerate(b.epi_min, b.epi_max) AS epi_flat
    FROM summary s
    LEFT JOIN questions q ON q.ckey = s.ckey
    LEFT JOIN bounds b ON b.ckey = s.ckey
)
SELECT s.model, s.config_id, s.origin, s.power_source, s.config_ids, s.simulated, c.v.kind AS kind,
    list_filter(m.layer_groups, lambda x: x.name = 'early')[1].quant AS early_type,
    list_filter(m.layer_groups, lambda x: x.name = 'middle')[1].quant AS middle_type,
    list_filter(m.layer_groups, lambda x: x.name = 'late')[1].quant AS late_type,
    CAST(s.n_repeats AS BIGINT) AS n_repeats, CAST(s.n_excluded AS BIGINT) AS n_excluded,
    CAST(s.n_questions AS BIGINT) AS n_questions,
    s.j_per_token, CASE WHEN NOT s.jpt_flat THEN s.jpt_lo END AS j_per_token_ci_low,
    CASE WHEN NOT s.jpt_flat THEN s.jpt_hi END AS j_per_token_ci_high,
    s.accuracy, CASE WHEN NOT s.acc_flat THEN s.acc_lo END AS accuracy_ci_low,
    CASE WHEN NOT s.acc_flat THEN s.acc_hi END AS accuracy_ci_high,
    s.epi, CASE WHEN NOT s.epi_flat THEN s.epi_lo END AS epi_ci_low,
    CASE WHEN NOT s.epi_flat THEN s.epi_hi END AS epi_ci_high,
    nullif(concat_ws('; ',
        CASE WHEN s.n_repeats = 1 AND s.has_meter_uncertainty AND NOT s.jpt_flat
             THEN 'one repeat: the J/token interval covers the meter''s uncertainty only, not run-to-run variation'
             WHEN s.n_repeats = 1 THEN 'one repeat: run-to-run variation is not in any interval' END,
        CASE WHEN s.acc_flat THEN printf('accuracy: no interval, every resample gives %.4g (%d questions, %d repeat%s)',
                                         s.acc_min, s.n_questions, s.n_repeats, CASE WHEN s.n_repeats = 1 THEN '' ELSE 's' END) END,
        CASE WHEN s.jpt_flat THEN 'J/token: no interval, every resample gives the same value (no repeat or meter variation)' END,
        CASE WHEN s.epi_flat THEN 'EPI: no interval, every resample gives the same value' END), '') AS interval_note,
    s.ppl, s.ppl_stderr, s.kld_mean, s.file_size_bytes, s.bits_per_weight, s.decode_tokens_per_s,
    s.prefill_j_per_token, s.decode_j_per_token, s.avg_power_w
FROM joined s
LEFT JOIN configs c ON c.ckey = s.ckey
LEFT JOIN groups m ON m.ckey = s.ckey
ORDER BY s.model, s.config_id, s.origin, s.power_source;

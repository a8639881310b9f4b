-- mqepi SQL layer, part 2: per-run results. Load after macros.sql and views.sql:
--     SET VARIABLE mqepi_lake = '/path/to/lake';
--     .read analysis/macros.sql
--     .read analysis/views.sql
--     .read analysis/runs.sql
--
-- Views: run_energy (run x phase window), run_accuracy (run x benchmark, plus 'composite'),
-- run_metrics (finished run), config_identity (which configurations are one effective model).
-- config_summary is in summary.sql, after the bootstrap's macros (resamples.sql).
-- docs/analysis.md explains every column; analysis/twin_runs.py computes the same in Polars
-- (tests compare both).
--
-- Common rules:
--   * A run's status: 'failed' if it has a failed event, else 'finished' if it has a finished
--     event, else 'started' (unfinished). Its origin, repeat, power_source and file_sha256 come
--     from its started event (the earliest recorded; without one, its earliest run event).
--   * Every view carries origin ('lab' or 'community/<slug>'); every group-by over runs
--     includes it: lab and community results are never pooled.
--   * Every run-level view carries hardware_id: the run's (its started event's) hardware
--     profile id, 'unknown' for a run written before runs carried one (run schema 1) or a
--     window without run events. 'unknown' is a group like any other id, so joins and
--     groupings stay plain equality; every group-by over runs includes it (summary.sql,
--     flips.sql, frontier.sql): runs of different hardware are never pooled.
--   * simulated: the run's power_source is 'simulated', or a window's samples say simulated.
--     Simulated numbers are not measurements.
--   * Benchmarks: windows named mmlu, arc_challenge, hellaswag. Idle: idle_baseline.
--     pp = prefill, tg = decode.
--   * Sums and means of DOUBLEs here are ordered aggregates (sum(x ORDER BY ...)): a parallel
--     sum adds in a varying order and varies in the last bit from query to query.
--
-- Tunables (DuckDB variables, SET VARIABLE name = value; defaults in brackets):
--   mqepi_z          [1.96]  z of the Wilson intervals in run_accuracy
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
--   hardware_id                         run.hardware_id of the started event ('unknown': none)
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
        coalesce(first(hardware_id ORDER BY status <> 'started', recorded_at_ns, event_id), 'unknown') AS hardware_id,
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
    r.power_source, coalesce(r.hardware_id, 'unknown') AS hardware_id,
    coalesce(r.power_source = 'simulated', false) OR w.simulated AS simulated,
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
--   hardware_id                the run's hardware profile id ('unknown': none)
--   benchmark                  'mmlu' | 'arc_challenge' | 'hellaswag' | 'composite'
--   question_set_sha256        the question set (several: sorted, comma-separated; composite: NULL)
--   n_questions, n_correct     answers and correct answers (composite: sums over its benchmarks)
--   accuracy                   n_correct / n_questions; composite: the mean of the run's
--                              benchmark accuracies (each benchmark weighs the same)
--   accuracy_ci_low/high       Wilson score interval with z = mqepi_z (default 1.96, 95 %);
--                              composite: the mean of the benchmarks' Wilson bounds (the interval
--                              if the benchmarks' errors were fully correlated: conservative)
--   n_correct_norm, accuracy_norm
--                              the same under lm-eval's acc_norm (correct_norm: the choice with the
--                              highest log-likelihood per character); NULL unless every answer has
--                              correct_norm (version 1 rows have none); composite: the mean of the
--                              benchmarks' accuracy_norm (NULL if one is NULL). accuracy (acc) is
--                              unchanged by it and stays what EPI and every interval use
CREATE OR REPLACE VIEW run_accuracy AS
WITH runs AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        first(origin ORDER BY status <> 'started', recorded_at_ns, event_id) AS origin,
        first("repeat" ORDER BY status <> 'started', recorded_at_ns, event_id) AS "repeat",
        coalesce(first(hardware_id ORDER BY status <> 'started', recorded_at_ns, event_id), 'unknown') AS hardware_id
    FROM run GROUP BY model, config_id, run_id
), z AS (
    SELECT CAST(coalesce(getvariable('mqepi_z'), 1.96) AS DOUBLE) AS z
), per_benchmark AS (
    SELECT model, config_id, run_id, benchmark, first(origin ORDER BY recorded_at_ns, event_id) AS answer_origin,
        string_agg(DISTINCT question_set_sha256, ',' ORDER BY question_set_sha256) AS question_set_sha256,
        count(*) AS n_questions, count(*) FILTER (WHERE correct) AS n_correct,
        CASE WHEN count(correct_norm) = count(*) THEN count(*) FILTER (WHERE correct_norm) END AS n_correct_norm
    FROM benchmark_answer GROUP BY model, config_id, run_id, benchmark
), wilson AS (
    SELECT b.*, b.n_correct / b.n_questions AS accuracy, b.n_correct_norm / b.n_questions AS accuracy_norm,
        greatest(0.0, (b.n_correct / b.n_questions + z.z * z.z / (2 * b.n_questions)) / (1 + z.z * z.z / b.n_questions)
            - z.z * sqrt((b.n_correct / b.n_questions) * (1 - b.n_correct / b.n_questions) / b.n_questions
                         + z.z * z.z / (4.0 * b.n_questions * b.n_questions)) / (1 + z.z * z.z / b.n_questions)) AS accuracy_ci_low,
        least(1.0, (b.n_correct / b.n_questions + z.z * z.z / (2 * b.n_questions)) / (1 + z.z * z.z / b.n_questions)
            + z.z * sqrt((b.n_correct / b.n_questions) * (1 - b.n_correct / b.n_questions) / b.n_questions
                         + z.z * z.z / (4.0 * b.n_questions * b.n_questions)) / (1 + z.z * z.z / b.n_questions)) AS accuracy_ci_high
    FROM per_benchmark b, z
), rows AS (
    SELECT model, config_id, run_id, answer_origin, benchmark, question_set_sha256, n_questions, n_correct,
        accuracy, accuracy_ci_low, accuracy_ci_high, n_correct_norm, accuracy_norm
    FROM wilson
    UNION ALL
    SELECT model, config_id, run_id, first(answer_origin ORDER BY benchmark), 'composite', NULL,
        sum(n_questions), sum(n_correct), avg(accuracy ORDER BY benchmark), avg(accuracy_ci_low ORDER BY benchmark),
        avg(accuracy_ci_high ORDER BY benchmark),
        CASE WHEN count(n_correct_norm) = count(*) THEN sum(n_correct_norm) END,
        CASE WHEN count(accuracy_norm) = count(*) THEN avg(accuracy_norm ORDER BY benchmark) END
    FROM wilson GROUP BY model, config_id, run_id
)
SELECT a.model, a.config_id, a.run_id, coalesce(r.origin, a.answer_origin) AS origin, r."repeat",
    coalesce(r.hardware_id, 'unknown') AS hardware_id, a.benchmark,
    a.question_set_sha256, CAST(a.n_questions AS BIGINT) AS n_questions, CAST(a.n_correct AS BIGINT) AS n_correct,
    a.accuracy, a.accuracy_ci_low, a.accuracy_ci_high, CAST(a.n_correct_norm AS BIGINT) AS n_correct_norm,
    a.accuracy_norm
FROM rows a
LEFT JOIN runs r ON r.run_key = concat_ws('/', a.model, a.config_id, a.run_id);

-- ---------------------------------------------------------------- run_metrics
-- One row per FINISHED run (a finished event and no failed event).
--   model, config_id, run_id, origin, repeat, power_source, hardware_id, simulated   the run
--   valid                  every benchmark window valid, and at least one
--   n_benchmarks           benchmarks in the composite accuracy (answered)
--   benchmark_energy_j     sum of energy_j over the benchmark windows, J (NULL if one lacks energy)
--   benchmark_energy_uncertainty_j
--                          one standard uncertainty of benchmark_energy_j: root sum of squares of
--                          the windows' energy_uncertainty_j, J
--   benchmark_tokens       sum of their tokens (NULL if one lacks tokens)
--   benchmark_questions    sum over the benchmark windows of the questions the run answered in
--                          that benchmark (run_accuracy.n_questions of the window's phase; NULL if
--                          one window has no answers)
--   j_per_token            benchmark_energy_j / benchmark_tokens, J/token
--   j_per_question         benchmark_energy_j / benchmark_questions, J/question (the same energy)
--   net_j_per_token        the same with net energy, J/token
--   prefill_j_per_token    energy / tokens of the pp windows, J/token
--   decode_j_per_token     energy / tokens of the tg windows, J/token
--   accuracy               composite accuracy (run_accuracy), 0..1
--   accuracy_norm          composite accuracy under acc_norm (run_accuracy; NULL without correct_norm)
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
        first(file_sha256 ORDER BY status <> 'started', recorded_at_ns, event_id) AS file_sha256,
        coalesce(first(hardware_id ORDER BY status <> 'started', recorded_at_ns, event_id), 'unknown') AS hardware_id
    FROM run GROUP BY model, config_id, run_id
    HAVING bool_or(status = 'finished') AND NOT bool_or(status = 'failed')
), answered AS (  -- questions answered per run and benchmark
    SELECT concat_ws('/', model, config_id, run_id, benchmark) AS window_key, n_questions
    FROM run_accuracy WHERE benchmark <> 'composite'
), energy AS (
    SELECT e.*, q.n_questions AS window_questions
    FROM run_energy e
    LEFT JOIN answered q ON q.window_key = concat_ws('/', e.model, e.config_id, e.run_id, e.phase)
), windows AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        count(*) FILTER (WHERE window_kind = 'benchmark') AS n_windows,
        coalesce(bool_and(valid) FILTER (WHERE window_kind = 'benchmark'), false) AS all_valid,
        coalesce(bool_or(simulated) FILTER (WHERE window_kind = 'benchmark'), false) AS simulated,
        mqepi_window_sum(energy_j, window_kind = 'benchmark') AS energy_j,
        sqrt(mqepi_window_sum(energy_uncertainty_j * energy_uncertainty_j, window_kind = 'benchmark')) AS energy_uncertainty_j,
        mqepi_window_sum(net_energy_j, window_kind = 'benchmark') AS net_energy_j,
        mqepi_window_sum(tokens, window_kind = 'benchmark') AS tokens,
        mqepi_window_sum(window_questions, window_kind = 'benchmark') AS questions,
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
    FROM energy GROUP BY model, config_id, run_id
), accuracy AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        count(*) FILTER (WHERE benchmark <> 'composite') AS n_benchmarks,
        any_value(accuracy) FILTER (WHERE benchmark = 'composite') AS accuracy,
        any_value(accuracy_norm) FILTER (WHERE benchmark = 'composite') AS accuracy_norm,
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
SELECT r.model, r.config_id, r.run_id, r.origin, r."repeat", r.power_source, r.hardware_id,
    r.power_source = 'simulated' OR coalesce(w.simulated, false) AS simulated,
    coalesce(w.n_windows > 0 AND w.all_valid, false) AS valid,
    CAST(coalesce(a.n_benchmarks, 0) AS BIGINT) AS n_benchmarks,
    w.energy_j AS benchmark_energy_j, w.energy_uncertainty_j AS benchmark_energy_uncertainty_j,
    CAST(w.tokens AS BIGINT) AS benchmark_tokens, CAST(w.questions AS BIGINT) AS benchmark_questions,
    w.energy_j / nullif(w.tokens, 0) AS j_per_token,
    w.energy_j / nullif(w.questions, 0) AS j_per_question,
    w.net_energy_j / nullif(w.tokens, 0) AS net_j_per_token,
    w.prefill_j_per_token, w.decode_j_per_token,
    a.accuracy, a.accuracy_norm,
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
--                              model with a finished run (finished, never failed), else the
--                              smallest; a name that is no sensitivity probe ('probe-...') first
--                              (a searched or paper map with a probe's tensors keeps its name)
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
), ran AS (  -- configurations with a finished run (run_metrics: finished, never failed)
    SELECT concat_ws('/', model, origin, config_id) AS k, any_value(model) AS model, any_value(origin) AS origin,
        any_value(config_id) AS config_id, true AS measured
    FROM run_metrics GROUP BY ALL
), configs AS (
    SELECT coalesce(l.k, r.k) AS k, coalesce(l.model, r.model) AS model, coalesce(l.origin, r.origin) AS origin,
        coalesce(l.config_id, r.config_id) AS config_id, l.effective_key, coalesce(r.measured, false) AS measured
    FROM latest l FULL OUTER JOIN ran r ON r.k = l.k
), keyed_configs AS (
    SELECT *, concat_ws('/', model, origin, coalesce(effective_key, 'config:' || config_id)) AS model_key FROM configs
)
SELECT model, origin, config_id, effective_key,
    coalesce(min(CASE WHEN measured AND NOT starts_with(config_id, 'probe-') THEN config_id END) OVER w,
        min(CASE WHEN NOT starts_with(config_id, 'probe-') THEN config_id END) OVER w,
        min(CASE WHEN measured THEN config_id END) OVER w, min(config_id) OVER w) AS canonical_id,
    list_sort(list(config_id) OVER w) AS config_ids
FROM keyed_configs
WINDOW w AS (PARTITION BY model_key)
ORDER BY model, origin, config_id;


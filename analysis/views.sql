-- mqepi SQL layer: one view per event type over the Parquet lake, for DuckDB.
--
-- Load it against any lake folder, after macros.sql (the mqepi CLI does this for you):
--     duckdb -cmd "SET VARIABLE mqepi_lake = '/path/to/lake'" -cmd ".read analysis/macros.sql" \
--            -cmd ".read analysis/views.sql"
-- or inside a session:
--     SET VARIABLE mqepi_lake = '/path/to/lake';
--     .read analysis/macros.sql
--     .read analysis/views.sql
--
-- Every base view reads its event type through the table macro mqepi_events (macros.sql):
-- <lake>/<event_type>/model=*/config_id=*[/run_id=*]/*.parquet with hive partitioning (the
-- partition columns typed VARCHAR), files unioned by column name, one row per event_id (the
-- earliest recorded), so a re-appended event counts once.
-- Temporary files (.tmp-*.partial) never match the *.parquet glob. Each folder holds a
-- zero-row seed file (model=_seed/...), written by `mqepi lake init`, so that every view
-- exists with its full column set even before the first event of its type.
-- Derived views (the energy windows) follow the base views.

-- DuckDB 2.0.1 can drop rows when a join's filter is pushed into these de-duplicating hive
-- scans (seen as a lost run when joining two base views on model/config_id/run_id; cf.
-- duckdb/duckdb#26044). Every mqepi query runs with that optimizer off; tests/test_sql.py
-- compares joins with an independent read.
SET disabled_optimizers = 'join_filter_pushdown';

-- ---------------------------------------------------------------- configs (model/config_id)

CREATE OR REPLACE VIEW quant_config AS FROM mqepi_config_events('quant_config');
CREATE OR REPLACE VIEW quantization AS FROM mqepi_config_events('quantization');
CREATE OR REPLACE VIEW config_alias AS FROM mqepi_config_events('config_alias');
CREATE OR REPLACE VIEW tensor_inventory AS FROM mqepi_config_events('tensor_inventory');

-- ---------------------------------------------------------------- runs (model/config_id/run_id)

CREATE OR REPLACE VIEW run AS FROM mqepi_run_events('run');
CREATE OR REPLACE VIEW phase AS FROM mqepi_run_events('phase');
CREATE OR REPLACE VIEW power_sample AS FROM mqepi_run_events('power_sample');
CREATE OR REPLACE VIEW thermal_sample AS FROM mqepi_run_events('thermal_sample');
CREATE OR REPLACE VIEW benchmark_answer AS FROM mqepi_run_events('benchmark_answer');
CREATE OR REPLACE VIEW perplexity AS FROM mqepi_run_events('perplexity');
CREATE OR REPLACE VIEW kld AS FROM mqepi_run_events('kld');
CREATE OR REPLACE VIEW throughput AS FROM mqepi_run_events('throughput');

-- ================================================================ energy
-- Power windows, derived from power_sample, phase, thermal_sample and the quality events.
-- The same definitions as mqepi/meter/clock.py and mqepi/meter/windows.py (tests compare
-- both; docs/meter.md explains them). Constants, kept equal to the Python ones:
--   gap factor 1.5 nominal periods; coverage >= 0.95; clock residual < 400 ms (MLPerf
--   Power); resolution part of the uncertainty <= 1 % of the average power; thermal
--   samples within 10 s of a window; idle phase name 'idle_baseline'; vcgencmd sticky
--   throttle bits 0xF0000 (983040). Resolution and accuracy per power source as in
--   mqepi/meter/stream.py (POWER_RESOLUTION_W, POWER_ACCURACY_REL; tests/test_sql.py
--   compares). Every row carries power_source: 'simulated' is not measured.

-- Resolution (W per reading step) and relative accuracy of each power source.
CREATE OR REPLACE VIEW power_source_figures AS
SELECT * FROM (VALUES
    ('epi-meter', 1.0, 0.01), ('atm90e26', 1.0, 0.01), ('simulated', 1.0, 0.01),
    ('nvml', 0.001, 0.05), ('replay', 1.0, 0.01)) AS t(power_source, resolution_w, accuracy_rel);

-- Power samples with their meter epoch: +1 after each sequence decrease (a meter reset),
-- counted per run and meter in arrival order. A meter that never reset (the usual case) is
-- found by one sort of the ordering columns alone and keeps epoch 0; only the samples of a
-- run and meter with a reset are sorted again, whole, to count them.
CREATE OR REPLACE VIEW power_epoch AS
WITH resets AS (
    SELECT DISTINCT run_id, meter_id
    FROM (SELECT run_id, meter_id, seq,
                 lag(seq) OVER (PARTITION BY run_id, meter_id ORDER BY host_time_ns, seq, channel) AS prev_seq
          FROM power_sample)
    WHERE seq < prev_seq
)
SELECT s.*, CAST(0 AS BIGINT) AS epoch
FROM power_sample s ANTI JOIN resets r ON r.run_id = s.run_id AND r.meter_id = s.meter_id
UNION ALL
SELECT * EXCLUDE (prev_seq),
    CAST(sum(CASE WHEN seq < prev_seq THEN 1 ELSE 0 END) OVER (
        PARTITION BY run_id, meter_id ORDER BY host_time_ns, seq, channel ROWS UNBOUNDED PRECEDING) AS BIGINT) AS epoch
FROM (SELECT *, lag(seq) OVER (PARTITION BY run_id, meter_id ORDER BY host_time_ns, seq, channel) AS prev_seq
      FROM power_sample s SEMI JOIN resets r ON r.run_id = s.run_id AND r.meter_id = s.meter_id);

-- Least-squares fit host_s = intercept_s + slope * meter_s per run, meter and epoch, one
-- point per line, both clocks relative to the epoch's first line.
CREATE OR REPLACE VIEW power_clock_params AS
WITH lines AS (
    SELECT DISTINCT run_id, meter_id, epoch, seq, meter_time_ns, host_time_ns
    FROM power_epoch WHERE meter_time_ns IS NOT NULL
), origin AS (
    SELECT *, min(meter_time_ns) OVER g AS meter_origin_ns, min(host_time_ns) OVER g AS host_origin_ns
    FROM lines WINDOW g AS (PARTITION BY run_id, meter_id, epoch)
)
SELECT run_id, meter_id, epoch, count(*) AS n_lines,
    any_value(meter_origin_ns) AS meter_origin_ns, any_value(host_origin_ns) AS host_origin_ns,
    regr_intercept((host_time_ns - host_origin_ns) / 1e9, (meter_time_ns - meter_origin_ns) / 1e9) AS intercept_s,
    regr_slope((host_time_ns - host_origin_ns) / 1e9, (meter_time_ns - meter_origin_ns) / 1e9) AS slope
FROM origin
GROUP BY run_id, meter_id, epoch
HAVING count(DISTINCT meter_time_ns) >= 2;

-- Power samples on the host time line: time_ns is the fitted host time of the meter clock,
-- or the arrival stamp where the meter sent no clock; residual_ns = arrival - fitted.
CREATE OR REPLACE VIEW power_aligned AS
SELECT e.*,
    CASE WHEN f.slope IS NOT NULL AND e.meter_time_ns IS NOT NULL
         THEN f.host_origin_ns + CAST(round((f.intercept_s + f.slope * ((e.meter_time_ns - f.meter_origin_ns) / 1e9)) * 1e9) AS BIGINT)
         ELSE e.host_time_ns END AS time_ns,
    CASE WHEN f.slope IS NOT NULL AND e.meter_time_ns IS NOT NULL
         THEN e.host_time_ns - (f.host_origin_ns + CAST(round((f.intercept_s + f.slope * ((e.meter_time_ns - f.meter_origin_ns) / 1e9)) * 1e9) AS BIGINT))
         END AS residual_ns
FROM power_epoch e LEFT JOIN power_clock_params f USING (run_id, meter_id, epoch);

-- The clock fit of each run, meter and epoch: drift and residual (MLPerf limit 400 ms).
CREATE OR REPLACE VIEW power_clock_fit AS
SELECT f.run_id, f.meter_id, f.epoch, f.n_lines, f.slope, (1.0 / f.slope - 1.0) * 1e6 AS meter_drift_ppm,
    f.intercept_s, f.meter_origin_ns, f.host_origin_ns,
    sqrt(avg(a.residual_ns::DOUBLE * a.residual_ns)) / 1e6 AS residual_rms_ms,
    max(abs(a.residual_ns)) / 1e6 AS residual_max_ms,
    max(abs(a.residual_ns)) / 1e6 < 400 AS clock_ok
FROM power_clock_params f
JOIN (SELECT DISTINCT run_id, meter_id, epoch, seq, residual_ns FROM power_aligned WHERE residual_ns IS NOT NULL) a
    USING (run_id, meter_id, epoch)
GROUP BY ALL;

-- Energy per phase window and meter channel: trapezoid rule on the aligned samples,
-- coverage, uncertainty, idle baseline, net energy and the validity gates.
CREATE OR REPLACE VIEW window_energy AS
WITH ordered AS (
    SELECT run_id, meter_id, channel, node, power_source, seq, host_time_ns, time_ns, power_w, residual_ns,
        lead(time_ns) OVER w AS next_ns, lead(power_w) OVER w AS next_w, row_number() OVER w AS k
    FROM power_aligned
    WINDOW w AS (PARTITION BY run_id, meter_id, channel ORDER BY time_ns, host_time_ns, seq)
), chan AS (
    SELECT o.run_id, o.meter_id, o.channel, min(o.node) AS node,
        string_agg(DISTINCT o.power_source, ',' ORDER BY o.power_source) AS power_source,
        median(o.next_ns - o.time_ns) FILTER (WHERE o.next_ns > o.time_ns) AS period_ns,
        max(f.resolution_w) AS resolution_w, max(f.accuracy_rel) AS accuracy_rel
    FROM ordered o LEFT JOIN power_source_figures f USING (power_source)
    GROUP BY o.run_id, o.meter_id, o.channel
), segs AS (
    -- each sample's segment to the next one (the last sample's is open-ended: held) ...
    SELECT run_id, meter_id, channel, time_ns AS ta, next_ns AS tb, power_w AS pa, coalesce(next_w, power_w) AS pb,
        residual_ns, next_ns IS NULL AS edge, false AS head
    FROM ordered
    UNION ALL
    -- ... and the open stretch before the first sample, held at the first reading
    SELECT run_id, meter_id, channel, NULL, time_ns, power_w, power_w, NULL, true, true
    FROM ordered WHERE k = 1
), joined AS (
    SELECT w.event_id AS phase_event_id, w.model, w.config_id, w.run_id, w.phase, w.node AS phase_node,
        w.start_ns, w.end_ns, c.meter_id, c.channel, c.node, c.power_source, c.period_ns, c.resolution_w,
        c.accuracy_rel, s.ta, s.tb, s.pa, s.pb, s.residual_ns, s.edge, s.head,
        greatest(coalesce(s.ta, w.start_ns), w.start_ns) AS lo, least(coalesce(s.tb, w.end_ns), w.end_ns) AS hi
    FROM phase w
    JOIN chan c ON c.run_id = w.run_id AND (w.node IS NULL OR c.node = w.node)
    JOIN segs s ON s.run_id = c.run_id AND s.meter_id = c.meter_id AND s.channel = c.channel
        AND coalesce(s.ta, w.start_ns) < w.end_ns AND coalesce(s.tb, w.end_ns) >= w.start_ns
    WHERE w.end_ns > w.start_ns
), parts AS (
    SELECT *,
        greatest(hi - lo, 0) / 1e9 AS len_s,
        CASE WHEN edge OR tb = ta THEN pa ELSE pa + (pb - pa) * ((lo - ta)::DOUBLE / (tb - ta)::DOUBLE) END AS p_lo,
        CASE WHEN edge OR tb = ta THEN pa ELSE pa + (pb - pa) * ((hi - ta)::DOUBLE / (tb - ta)::DOUBLE) END AS p_hi,
        NOT head AND ta >= start_ns AND ta < end_ns AS inside
    FROM joined
), per_channel AS (
    SELECT phase_event_id, model, config_id, run_id, phase, phase_node, start_ns, end_ns, meter_id, channel, node,
        power_source, resolution_w, accuracy_rel,
        (end_ns - start_ns) / 1e9 AS elapsed_s,
        sum(len_s * (p_lo + p_hi) / 2.0) AS energy_j,
        sum(len_s * pa) AS hold_energy_j,
        sum(CASE WHEN edge OR period_ns IS NULL THEN 0.0
                 WHEN (tb - ta) <= 1.5 * period_ns THEN len_s
                 ELSE len_s * period_ns / (tb - ta) END) AS covered_s,
        count(*) FILTER (WHERE inside) AS n_samples,
        max(abs(residual_ns)) FILTER (WHERE inside) / 1e6 AS clock_residual_max_ms
    FROM parts
    GROUP BY ALL
), stats AS (
    SELECT *,
        energy_j / elapsed_s AS avg_power_w,
        abs(energy_j - hold_energy_j) AS sampling_error_j,
        sqrt(pow(accuracy_rel * energy_j, 2)
             + pow(resolution_w / sqrt(12) * elapsed_s / sqrt(greatest(n_samples, 1)), 2)
             + pow(energy_j - hold_energy_j, 2)) AS energy_uncertainty_j,
        CASE WHEN energy_j / elapsed_s > 0
             THEN CAST(ceil(pow(resolution_w / sqrt(12) / (0.01 * energy_j / elapsed_s), 2)) AS BIGINT) END AS samples_needed,
        covered_s / elapsed_s AS coverage,
        greatest(elapsed_s - covered_s, 0.0) AS gap_s
    FROM per_channel
), thermal AS (
    -- throttled: a sample inside the window says "throttled now", or the sticky "has
    -- occurred" bits differ between the last sample at/before the start and the first
    -- at/after the end (looked for up to 10 s away)
    SELECT s.phase_event_id, s.meter_id, s.channel, count(t.host_time_ns) AS thermal_samples,
        coalesce(bool_or(t.throttled) FILTER (WHERE t.host_time_ns BETWEEN s.start_ns AND s.end_ns), false)
        OR coalesce(
            (coalesce(arg_max(t.throttle_flags, t.host_time_ns) FILTER (WHERE t.host_time_ns <= s.start_ns),
                      arg_min(t.throttle_flags, t.host_time_ns)) & 983040)
            <> (coalesce(arg_min(t.throttle_flags, t.host_time_ns) FILTER (WHERE t.host_time_ns >= s.end_ns),
                         arg_max(t.throttle_flags, t.host_time_ns)) & 983040), false) AS throttled
    FROM stats s
    LEFT JOIN thermal_sample t ON t.run_id = s.run_id AND (s.node IS NULL OR t.node = s.node)
        AND t.host_time_ns BETWEEN s.start_ns - 10000000000 AND s.end_ns + 10000000000
    GROUP BY ALL
), judged AS (
    SELECT s.*, t.thermal_samples, t.throttled,
        nullif(concat_ws('; ',
            CASE WHEN s.coverage < 0.95 THEN printf('coverage %.3f < 0.95', s.coverage) END,
            CASE WHEN s.clock_residual_max_ms >= 400 THEN printf('clock residual %.1f ms >= 400.0 ms', s.clock_residual_max_ms) END,
            CASE WHEN t.throttled THEN 'throttled' END,
            CASE WHEN s.samples_needed IS NULL THEN printf('samples %d < n/a needed', s.n_samples)
                 WHEN s.n_samples < greatest(2, s.samples_needed)
                 THEN printf('samples %d < %d needed', s.n_samples, greatest(2, s.samples_needed)) END
        ), '') AS invalid_reasons
    FROM stats s JOIN thermal t USING (phase_event_id, meter_id, channel)
), idle AS (
    SELECT run_id, meter_id, channel, end_ns AS idle_end_ns, avg_power_w AS idle_power_w,
        energy_uncertainty_j / elapsed_s AS idle_power_uncertainty_w
    FROM judged WHERE phase = 'idle_baseline' AND invalid_reasons IS NULL
)
SELECT j.model, j.config_id, j.run_id, j.phase, j.phase_node, j.start_ns, j.end_ns, j.elapsed_s,
    j.meter_id, j.channel, j.node, j.power_source, j.energy_j, j.avg_power_w, j.energy_uncertainty_j,
    j.sampling_error_j, j.n_samples, j.samples_needed, j.coverage, j.gap_s, j.clock_residual_max_ms,
    i.idle_power_w,
    j.energy_j - i.idle_power_w * j.elapsed_s AS net_energy_j,
    sqrt(pow(j.energy_uncertainty_j, 2) + pow(i.idle_power_uncertainty_w * j.elapsed_s, 2)) AS net_energy_uncertainty_j,
    j.thermal_samples, j.throttled, j.invalid_reasons IS NULL AS valid, j.invalid_reasons, j.phase_event_id
FROM judged j
ASOF LEFT JOIN idle i ON j.run_id = i.run_id AND j.meter_id = i.meter_id AND j.channel = i.channel
    AND j.start_ns >= i.idle_end_ns;

-- Energy per phase window (all its channels), per token, with the window's validity. Every
-- phase is listed, also those without samples (flagged invalid, never dropped). Tokens: the
-- phase's own, else the run's quality events named like the phase (benchmark_answer by
-- benchmark, perplexity, throughput pp = prefill, tg = decode, pg = both).
CREATE OR REPLACE VIEW window_energy_total AS
WITH quality_tokens AS (
    SELECT run_id, benchmark AS phase, CAST(sum(tokens_evaluated) AS BIGINT) AS tokens, 'benchmark_answer' AS token_source
    FROM benchmark_answer GROUP BY ALL
    UNION ALL
    SELECT run_id, 'perplexity', CAST(sum(tokens) AS BIGINT), 'perplexity' FROM perplexity GROUP BY ALL
    UNION ALL
    SELECT run_id, test, CAST(sum(CASE test WHEN 'pp' THEN n_prompt WHEN 'tg' THEN n_gen ELSE n_prompt + n_gen END
                                  * repetitions) AS BIGINT), 'throughput'
    FROM throughput GROUP BY ALL
), totals AS (
    SELECT phase_event_id, count(*) AS channels, sum(energy_j) AS energy_j,
        sqrt(sum(pow(energy_uncertainty_j, 2))) AS energy_uncertainty_j,
        CASE WHEN count(net_energy_j) = count(*) THEN sum(net_energy_j) END AS net_energy_j,
        CASE WHEN count(net_energy_j) = count(*) THEN sqrt(sum(pow(net_energy_uncertainty_j, 2))) END AS net_energy_uncertainty_j,
        min(coverage) AS coverage, max(clock_residual_max_ms) AS clock_residual_max_ms, bool_or(throttled) AS throttled,
        string_agg(DISTINCT power_source, ',' ORDER BY power_source) AS power_sources,
        bool_and(valid) AS all_valid,
        string_agg(CASE WHEN NOT valid THEN array_to_string(
            list_transform(string_split(invalid_reasons, '; '), lambda r: 'ch' || channel || ': ' || r), '; ') END,
            '; ' ORDER BY channel) AS channel_reasons
    FROM window_energy GROUP BY phase_event_id
)
SELECT p.model, p.config_id, p.run_id, p.phase, p.node, p.start_ns, p.end_ns, (p.end_ns - p.start_ns) / 1e9 AS elapsed_s,
    coalesce(t.channels, 0) AS channels, t.energy_j, t.energy_j / nullif((p.end_ns - p.start_ns) / 1e9, 0) AS avg_power_w,
    t.energy_uncertainty_j, t.net_energy_j, t.net_energy_uncertainty_j,
    coalesce(p.tokens, q.tokens) AS tokens,
    CASE WHEN p.tokens IS NOT NULL THEN 'phase' ELSE q.token_source END AS token_source,
    t.energy_j / nullif(coalesce(p.tokens, q.tokens), 0) AS j_per_token,
    t.net_energy_j / nullif(coalesce(p.tokens, q.tokens), 0) AS net_j_per_token,
    t.coverage, t.clock_residual_max_ms, coalesce(t.throttled, false) AS throttled,
    t.power_sources, coalesce(t.power_sources LIKE '%simulated%', false) AS simulated,
    coalesce(p.end_ns > p.start_ns AND t.all_valid, false) AS valid,
    CASE WHEN p.end_ns <= p.start_ns THEN 'empty window'
         WHEN t.phase_event_id IS NULL THEN 'no power samples'
         ELSE t.channel_reasons END AS invalid_reasons,
    p.event_id AS phase_event_id
FROM phase p
LEFT JOIN totals t ON t.phase_event_id = p.event_id
LEFT JOIN quality_tokens q ON q.run_id = p.run_id AND q.phase = p.phase;

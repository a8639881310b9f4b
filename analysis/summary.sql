-- mqepi SQL layer, part 6: config_summary, one row per effective model of a family. Load
-- after resamples.sql and flips.sql. analysis/twin_runs.py computes the same in Polars (tests compare both).
--
-- Tunables (DuckDB variables; defaults in brackets):
--   mqepi_seed       [1234]  seed of the bootstrap (0 .. 2147483647)
--   mqepi_bootstrap  [1000]  bootstrap resamples (>= 1)

-- ---------------------------------------------------------------- config_summary
-- One row per effective model (config_identity) and (model, origin, power_source, hardware_id) with at
-- least one finished run. Medians over the valid runs of all its names; NULL values are left
-- out.
--   model, config_id, origin, power_source, hardware_id
--                          the group (lab and community, measured and simulated power, and
--                          different hardware never pooled; hardware_id 'unknown': runs without one);
--                          config_id is config_identity.canonical_id
--   config_ids             every name of this model (config_identity.config_ids), sorted
--   simulated              any of its finished runs simulated
--   kind                   'uniform' | 'mixed' | 'searched' | 'probe' (quant_config of the config, of
--                          the group's origin first; mqepi.quant.maps.QuantMap.kind). Probes (the
--                          per-layer search's sensitivity probes) stay here, queryable; frontier.sql
--                          and the report leave them out
--   early_type, middle_type, late_type
--                          quant type of the map's groups named early / middle / late
--                          (quant_config.map_json layer_groups[].name / .quant; NULL if absent)
--   n_repeats              valid runs used
--   n_excluded             finished runs not valid (failed and unfinished runs are not counted)
--   n_questions            distinct questions its valid runs answered (all benchmarks)
--   j_per_token, accuracy, epi (+ _ci_low, _ci_high)
--                          medians of the runs' values; 95 % percentile interval of the
--                          hierarchical bootstrap (resamples.sql; quantile_cont 0.025 / 0.975 of
--                          the B resample medians), NULL where degenerate (mqepi_degenerate);
--                          epi is the median of the runs' EPI, not a ratio of medians; its
--                          interval ends at +Infinity when resamples without a right answer
--                          (infinite EPI) reach the quantile
--   j_per_question (+ _ci_low, _ci_high)
--                          median of the runs' J/question (run_metrics: the benchmark windows'
--                          energy over the questions answered in them); its interval is the same
--                          hierarchical bootstrap's: the repeats and each run's meter noise drawn
--                          as for J/token (drawing questions does not move a run's energy, so it
--                          does not move J/question); NULL where degenerate, as J/token's
--   accuracy_norm          median of the runs' composite accuracy under lm-eval's acc_norm
--                          (run_metrics.accuracy_norm), a point value without interval; NULL where
--                          the answers carry no correct_norm (version 1). accuracy, EPI and
--                          their intervals stay acc
--   interval_note          why an interval is missing or narrower than the data's variation
--                          ('; '-separated; NULL when every interval covers repeats, questions
--                          and the meter)
--   ppl, ppl_stderr, kld_mean, file_size_bytes, bits_per_weight, decode_tokens_per_s,
--   prefill_j_per_token, decode_j_per_token, avg_power_w
--                          medians over the valid runs (units as run_metrics)
--   flip_reference_id      the family's base (answer_flips; NULL: the family has none)
--   flip_share, flip_share_low, flip_share_high
--                          answer_flips against the base over every benchmark (benchmark 'all'):
--                          share of the compared questions whose answer differs from the base's,
--                          Wilson 95 % score interval (mqepi_z); NULL for the base itself, without
--                          a base, or without a compared question
CREATE OR REPLACE VIEW config_summary AS
WITH rm AS MATERIALIZED (
    SELECT r.*, coalesce(ci.canonical_id, r.config_id) AS canonical_id,
        coalesce(ci.config_ids, [r.config_id]) AS config_ids
    FROM run_metrics r
    LEFT JOIN config_identity ci
        ON concat_ws('/', ci.model, ci.origin, ci.config_id) = concat_ws('/', r.model, r.origin, r.config_id)
), summary AS (
    SELECT concat_ws('/', model, origin, power_source, hardware_id, canonical_id) AS ckey,
        model, canonical_id AS config_id, origin, power_source, hardware_id, any_value(config_ids) AS config_ids,
        bool_or(simulated) AS simulated,
        count(*) FILTER (WHERE valid) AS n_repeats, count(*) FILTER (WHERE NOT valid) AS n_excluded,
        median(j_per_token) FILTER (WHERE valid) AS j_per_token,
        median(accuracy) FILTER (WHERE valid) AS accuracy,
        median(accuracy_norm) FILTER (WHERE valid) AS accuracy_norm,
        median(j_per_question) FILTER (WHERE valid) AS j_per_question,
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
    FROM rm GROUP BY model, canonical_id, origin, power_source, hardware_id
), questions AS (
    SELECT concat_ws('/', r.model, r.origin, r.power_source, r.hardware_id, r.canonical_id) AS ckey,
        count(DISTINCT a.benchmark || '/' || a.question_set_sha256 || '/' || a.question_id) AS n_questions
    FROM benchmark_answer a
    JOIN rm r ON concat_ws('/', r.model, r.config_id, r.run_id) = concat_ws('/', a.model, a.config_id, a.run_id)
    WHERE r.valid
    GROUP BY ALL
), bounds AS (
    SELECT ckey,
        quantile_cont(j_per_token, 0.025) AS jpt_lo, quantile_cont(j_per_token, 0.975) AS jpt_hi,
        min(j_per_token) AS jpt_min, max(j_per_token) AS jpt_max,
        quantile_cont(accuracy, 0.025) AS acc_lo, quantile_cont(accuracy, 0.975) AS acc_hi,
        min(accuracy) AS acc_min, max(accuracy) AS acc_max,
        quantile_cont(epi, 0.025) AS epi_lo, quantile_cont(epi, 0.975) AS epi_hi,
        min(epi) AS epi_min, max(epi) AS epi_max,
        count(*) FILTER (WHERE mqepi_infinite(epi)) / nullif(count(epi), 0) AS epi_infinite_share
    FROM mqepi_config_resamples() GROUP BY ckey
), jpq_items AS (  -- the bootstrap's items with their questions answered in benchmark windows
    SELECT it.ckey, it.i, it.n, it.run_key, it.benchmark_energy_j, it.benchmark_energy_uncertainty_j,
        r.benchmark_questions
    FROM mqepi_boot_items() it
    JOIN rm r ON concat_ws('/', r.model, r.config_id, r.run_id) = it.run_key
), jpq_draws AS (  -- stream 0: the same repeat draws as mqepi_config_resamples
    SELECT nj.n, bb.b, mqepi_bootstrap_draw(mqepi_bootstrap_seed(), 0, bb.b, nj.j, nj.n) AS i
    FROM (SELECT n, unnest(range(n)) AS j FROM (SELECT DISTINCT n FROM jpq_items)) nj
    CROSS JOIN (SELECT unnest(range(1, mqepi_bootstrap_resamples() + 1)) AS b) bb
), jpq_resamples AS (
    SELECT it.ckey, d.b,
        median((it.benchmark_energy_j + coalesce(it.benchmark_energy_uncertainty_j, 0.0)
                * mqepi_bootstrap_normal(mqepi_bootstrap_seed(), d.b, mqepi_run_hash(it.run_key)))
               / nullif(it.benchmark_questions, 0)) AS jpq
    FROM jpq_items it JOIN jpq_draws d ON d.n = it.n AND d.i = it.i
    GROUP BY it.ckey, d.b
), jpq_bounds AS (
    SELECT ckey, quantile_cont(jpq, 0.025) AS jpq_lo, quantile_cont(jpq, 0.975) AS jpq_hi,
        min(jpq) AS jpq_min, max(jpq) AS jpq_max
    FROM jpq_resamples GROUP BY ckey
), flips AS (
    SELECT concat_ws('/', model, origin, power_source, hardware_id, config_id) AS ckey, reference_config_id,
        flip_share, flip_share_low, flip_share_high
    FROM answer_flips WHERE benchmark = 'all'
), bases AS (
    SELECT g, config_id FROM mqepi_flip_bases()
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
        b.epi_min IS NOT NULL AND mqepi_degenerate(b.epi_min, b.epi_max) AS epi_flat,
        j.jpq_lo, j.jpq_hi, j.jpq_min IS NOT NULL AND mqepi_degenerate(j.jpq_min, j.jpq_max) AS jpq_flat,
        bs.config_id AS flip_reference_id, f.flip_share, f.flip_share_low, f.flip_share_high
    FROM summary s
    LEFT JOIN questions q ON q.ckey = s.ckey
    LEFT JOIN bounds b ON b.ckey = s.ckey
    LEFT JOIN jpq_bounds j ON j.ckey = s.ckey
    LEFT JOIN bases bs ON bs.g = concat_ws('/', s.model, s.origin, s.power_source, s.hardware_id)
    LEFT JOIN flips f ON f.ckey = s.ckey
)
SELECT s.model, s.config_id, s.origin, s.power_source, s.hardware_id, s.config_ids, s.simulated, c.v.kind AS kind,
    list_filter(m.layer_groups, lambda x: x.name = 'early')[1].quant AS early_type,
    list_filter(m.layer_groups, lambda x: x.name = 'middle')[1].quant AS middle_type,
    list_filter(m.layer_groups, lambda x: x.name = 'late')[1].quant AS late_type,
    CAST(s.n_repeats AS BIGINT) AS n_repeats, CAST(s.n_excluded AS BIGINT) AS n_excluded,
    CAST(s.n_questions AS BIGINT) AS n_questions,
    s.j_per_token, CASE WHEN NOT s.jpt_flat THEN s.jpt_lo END AS j_per_token_ci_low,
    CASE WHEN NOT s.jpt_flat THEN s.jpt_hi END AS j_per_token_ci_high,
    s.j_per_question, CASE WHEN NOT s.jpq_flat THEN s.jpq_lo END AS j_per_question_ci_low,
    CASE WHEN NOT s.jpq_flat THEN s.jpq_hi END AS j_per_question_ci_high,
    s.accuracy, CASE WHEN NOT s.acc_flat THEN s.acc_lo END AS accuracy_ci_low,
    CASE WHEN NOT s.acc_flat THEN s.acc_hi END AS accuracy_ci_high, s.accuracy_norm,
    s.epi, CASE WHEN NOT s.epi_flat THEN mqepi_unbounded(s.epi_lo) END AS epi_ci_low,
    CASE WHEN NOT s.epi_flat THEN mqepi_unbounded(s.epi_hi) END AS epi_ci_high,
    nullif(concat_ws('; ',
        CASE WHEN s.n_repeats = 1 AND s.has_meter_uncertainty AND NOT s.jpt_flat
             THEN 'one repeat: the J/token interval covers the meter''s uncertainty only, not run-to-run variation'
             WHEN s.n_repeats = 1 THEN 'one repeat: run-to-run variation is not in any interval' END,
        CASE WHEN s.acc_flat THEN printf('accuracy: no interval, every resample gives %.4g (%d questions, %d repeat%s)',
                                         s.acc_min, s.n_questions, s.n_repeats, CASE WHEN s.n_repeats = 1 THEN '' ELSE 's' END) END,
        CASE WHEN s.jpt_flat THEN 'J/token: no interval, every resample gives the same value (no repeat or meter variation)' END,
        CASE WHEN s.epi_flat AND mqepi_infinite(s.epi_max) THEN 'EPI: infinite in every resample (accuracy 0)'
             WHEN s.epi_flat THEN 'EPI: no interval, every resample gives the same value'
             WHEN mqepi_infinite(s.epi_hi)
             THEN printf('EPI: no upper bound, accuracy is 0 in %.0f%% of resamples', 100 * s.epi_infinite_share) END),
        '') AS interval_note,
    s.ppl, s.ppl_stderr, s.kld_mean, s.file_size_bytes, s.bits_per_weight, s.decode_tokens_per_s,
    s.prefill_j_per_token, s.decode_j_per_token, s.avg_power_w,
    s.flip_reference_id, s.flip_share, s.flip_share_low, s.flip_share_high
FROM joined s
LEFT JOIN configs c ON c.ckey = s.ckey
LEFT JOIN groups m ON m.ckey = s.ckey
ORDER BY s.model, s.config_id, s.origin, s.power_source, s.hardware_id;

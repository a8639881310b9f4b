-- mqepi SQL layer, part 4: the KL divergence / energy frontier of the per-layer search.
--
-- Loaded after frontier.sql into the same DuckDB connection (mqepi.results.sql.connect);
-- builds on config_summary (summary.sql) only. Groups as in frontier.sql: a configuration is
-- (model, config_id, origin, power_source, hardware_id); frontiers are formed only inside one
-- (model, origin, power_source, hardware_id) group. Kind 'probe' (the per-layer search's
-- sensitivity probes, config_id 'probe-...') is left out; 'searched' is an ordinary
-- configuration. tests/test_kld_frontier.py compares the view with a brute force in Python;
-- docs/frontier.md explains it.

-- ---------------------------------------------------------------- kld_frontier
-- One row per config_summary row whose kld_mean and j_per_token are both finite, kind 'probe'
-- left out: where the configuration stands against the others of its (model, origin,
-- power_source, hardware_id) group in KL divergence from the base (lower is better) and J/token
-- (lower is better), the energy-aware per-layer search's view of the matrix. Point values
-- (config_summary's medians), no bootstrap.
-- Dominance: x dominates y when kld_mean_x <= kld_mean_y AND j_per_token_x <= j_per_token_y
-- AND at least one is strict. Two configurations at exactly the same point do not dominate
-- each other: both stay on the frontier.
-- Columns:
--   model, origin, power_source, hardware_id   the group
--   simulated              config_summary's: any of its runs simulated (power_source
--                          'simulated'): its J/token is NOT measured
--   config_id, kind        the configuration ('uniform' | 'mixed' | 'searched'; NULL without a
--                          quant_config)
--   kld_mean               nats, config_summary median (the runs' kld events against the base)
--   j_per_token            J/token of the benchmark windows, config_summary median
--   bits_per_weight, file_size_bytes   config_summary medians (NULL: no quantization event)
--   on_frontier            not dominated within its group
--   rank                   1, 2, ... by j_per_token within its group (ties: kld_mean, then config_id)
CREATE OR REPLACE VIEW kld_frontier AS
WITH points AS MATERIALIZED (
    SELECT model, origin, power_source, hardware_id, simulated, config_id, kind, kld_mean, j_per_token,
        bits_per_weight, file_size_bytes, concat_ws('/', model, origin, power_source, hardware_id) AS g,
        concat_ws('/', model, origin, power_source, hardware_id, config_id) AS ckey
    FROM config_summary
    WHERE kind IS DISTINCT FROM 'probe' AND isfinite(kld_mean) AND isfinite(j_per_token)
), dominated AS (
    SELECT DISTINCT y.ckey
    FROM points y JOIN points x ON x.g = y.g
    WHERE x.kld_mean <= y.kld_mean AND x.j_per_token <= y.j_per_token
        AND (x.kld_mean < y.kld_mean OR x.j_per_token < y.j_per_token)
)
SELECT p.model, p.origin, p.power_source, p.hardware_id, p.simulated, p.config_id, p.kind, p.kld_mean,
    p.j_per_token, p.bits_per_weight, p.file_size_bytes, d.ckey IS NULL AS on_frontier,
    row_number() OVER (PARTITION BY p.g ORDER BY p.j_per_token, p.kld_mean, p.config_id) AS "rank"
FROM points p
LEFT JOIN dominated d ON d.ckey = p.ckey
ORDER BY p.model, p.origin, p.power_source, p.hardware_id, "rank";

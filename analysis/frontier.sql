-- mqepi SQL layer, part 3: perplexity-matched pairs and the Pareto frontier.
--
-- Loaded after macros.sql, views.sql and runs.sql into the same DuckDB connection
-- (mqepi.results.sql.connect); builds on three views: config_summary and run_metrics
-- (runs.sql) and benchmark_answer (views.sql). analysis/twin_frontier.py computes the same
-- two views independently in Polars/numpy; tests/test_frontier.py compares both.
-- docs/frontier.md explains the rules.
--
-- Tunables (DuckDB variables, read when a view is queried):
--   mqepi_seed           bootstrap seed, 0 .. 2147483647              (default 1234)
--   mqepi_bootstrap      bootstrap resamples B, >= 1                  (default 1000)
--   mqepi_ppl_tolerance  relative perplexity tolerance >= 0, e.g. 0.02 (default NULL: match
--                        within the measured uncertainty)
-- A value out of range fails the query with its name and value.
--
-- Groups: a configuration is (model, config_id, origin, power_source), as in config_summary.
-- Pairs and frontiers are formed only inside one (model, origin, power_source) group: lab and
-- community results are never pooled, nor simulated with measured power.
--
-- Shared seeded bootstrap (the contract; identical in runs.sql and analysis/bootstrap.py): the
-- n items of a group are ordered and numbered i = 0..n-1; resample b = 1..B draws n items, draw
-- j = 0..n-1 taking item mqepi_bootstrap_index(seed, b, j, n) (macros.sql; the tunables seed
-- and B checked by mqepi_bootstrap_seed() and mqepi_bootstrap_resamples()). Intervals are
-- quantile_cont 0.025 / 0.975 over the B resample statistics (NULL statistics ignored).

-- Exact two-sided binomial (McNemar) p-value for b and c discordant pairs:
-- min(1, 2 * P(X <= min(b, c))) with X ~ Bin(b + c, 1/2); 1 when b + c = 0. The binomial
-- terms are summed in log space (lgamma), so that b + c in the tens of thousands stays finite.
CREATE OR REPLACE MACRO frontier_mcnemar_p(b, c) AS
    CASE WHEN b + c = 0 THEN 1.0
         ELSE least(1.0, 2.0 * list_sum(list_transform(range(least(b, c) + 1),
             lambda i: exp(lgamma(b + c + 1.0) - lgamma(i + 1.0) - lgamma(b + c - i + 1.0) - (b + c) * ln(2.0)))))
    END;

-- ---------------------------------------------------------------- matched_pairs
-- One row per pair of configurations a < b (config_id order) of the same (model, origin,
-- power_source) whose perplexities (config_summary medians) match:
--   mqepi_ppl_tolerance NULL:  |ppl_a - ppl_b| <= sqrt(ppl_stderr_a^2 + ppl_stderr_b^2)
--                              match_rule = 'within uncertainty'
--   mqepi_ppl_tolerance = t:   |ppl_a - ppl_b| <= t * min(ppl_a, ppl_b)
--                              match_rule = 'within <100 t>%' (printf %g: t = 0.02 -> 'within 2%')
-- Configurations without a perplexity (or, for the first rule, without its stderr) match
-- nothing.
-- Columns:
--   model, origin, power_source, simulated (power_source = 'simulated': NOT measured)
--   config_a, config_b                      the pair, config_a < config_b
--   ppl_a, ppl_b, ppl_stderr_a, ppl_stderr_b   config_summary medians (perplexity, unitless)
--   ppl_diff                                ppl_b - ppl_a
--   match_rule                              as above
--   j_per_token_a, j_per_token_b            config_summary medians (J/token, benchmark windows)
--   j_per_token_diff                        median over paired repeats of (J/token b - J/token a);
--                                           a median of differences, so not necessarily
--                                           j_per_token_b - j_per_token_a
--   j_per_token_diff_ci_low / _high         paired bootstrap interval of that median (J/token)
--   epi_a, epi_b                            config_summary medians (J/token / accuracy)
--   epi_diff, epi_diff_ci_low / _high       the same for EPI (a repeat whose EPI is NULL in a or
--                                           b, accuracy 0, gives a NULL difference, ignored)
--   n_paired_repeats                        repeats paired: repeat number valid in both (one
--                                           run per configuration and repeat: the valid run
--                                           with the smallest run_id)
--   n_questions_paired                      answers paired over those runs by
--                                           (question_set_sha256, question_id, repeat)
--   mcnemar_b                               paired answers a right, b wrong
--   mcnemar_c                               paired answers a wrong, b right
--   mcnemar_p                               exact two-sided binomial p (frontier_mcnemar_p);
--                                           NULL when no answers pair up
-- Paired bootstrap: the items are the paired repeats ordered by (repeat, run_id of a); each
-- resample's statistic is the median of the resampled differences. No paired repeats: the
-- differences and their intervals are NULL; one: the interval is [value, value].
CREATE OR REPLACE VIEW matched_pairs AS
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot,
        CASE WHEN CAST(getvariable('mqepi_ppl_tolerance') AS DOUBLE) < 0
             THEN error('mqepi_ppl_tolerance must be >= 0, got ' || getvariable('mqepi_ppl_tolerance'))
             ELSE CAST(getvariable('mqepi_ppl_tolerance') AS DOUBLE) END AS tol
), cfg AS MATERIALIZED (
    -- c: an integer id per configuration, to keep the wide joins and groupings cheap
    SELECT *, row_number() OVER (ORDER BY model, origin, power_source, config_id) AS c FROM config_summary
), pairs AS MATERIALIZED (
    SELECT row_number() OVER (ORDER BY a.model, a.origin, a.power_source, a.config_id, b.config_id) AS pid,
        a.c AS c_a, b.c AS c_b,
        a.model, a.origin, a.power_source, a.simulated, a.config_id AS config_a, b.config_id AS config_b,
        a.ppl AS ppl_a, b.ppl AS ppl_b, a.ppl_stderr AS ppl_stderr_a, b.ppl_stderr AS ppl_stderr_b,
        b.ppl - a.ppl AS ppl_diff,
        CASE WHEN p.tol IS NULL THEN 'within uncertainty' ELSE printf('within %g%%', p.tol * 100) END AS match_rule,
        a.j_per_token AS j_per_token_a, b.j_per_token AS j_per_token_b, a.epi AS epi_a, b.epi AS epi_b
    FROM cfg a
    JOIN cfg b ON b.model = a.model AND b.origin = a.origin AND b.power_source = a.power_source
        AND a.config_id < b.config_id
    CROSS JOIN params p
    WHERE CASE WHEN p.tol IS NULL
               THEN abs(a.ppl - b.ppl) <= sqrt(a.ppl_stderr * a.ppl_stderr + b.ppl_stderr * b.ppl_stderr)
               ELSE abs(a.ppl - b.ppl) <= p.tol * least(a.ppl, b.ppl) END
), reps AS MATERIALIZED (
    -- one valid run per configuration and repeat number: the smallest run_id
    SELECT f.c, r.model, r.config_id, r.origin, r."repeat", r.run_id, r.j_per_token, r.epi
    FROM run_metrics r JOIN cfg f USING (model, config_id, origin, power_source)
    WHERE r.valid
    QUALIFY row_number() OVER (PARTITION BY f.c, r."repeat" ORDER BY r.run_id) = 1
), paired AS MATERIALIZED (
    SELECT p.pid, ra."repeat", ra.model, ra.origin, ra.config_id AS config_a, rb.config_id AS config_b,
        ra.run_id AS run_a, rb.run_id AS run_b,
        rb.j_per_token - ra.j_per_token AS d_jpt, rb.epi - ra.epi AS d_epi,
        row_number() OVER (PARTITION BY p.pid ORDER BY ra."repeat", ra.run_id) - 1 AS i,
        count(*) OVER (PARTITION BY p.pid) AS n
    FROM pairs p
    JOIN reps ra ON ra.c = p.c_a
    JOIN reps rb ON rb.c = p.c_b AND rb."repeat" = ra."repeat"
), draws AS (
    -- the contract's draws for every item count n in use; they do not depend on the group
    SELECT nj.n, bb.b, mqepi_bootstrap_index(p.seed, bb.b, nj.j, nj.n) AS i
    FROM (SELECT n, unnest(range(n)) AS j FROM (SELECT DISTINCT n FROM paired)) nj
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
), boot AS (
    SELECT it.pid, d.b, median(it.d_jpt) AS s_jpt, median(it.d_epi) AS s_epi
    FROM paired it JOIN draws d ON d.n = it.n AND d.i = it.i
    GROUP BY it.pid, d.b
), intervals AS (
    SELECT pid,
        quantile_cont(s_jpt, 0.025) AS j_per_token_diff_ci_low, quantile_cont(s_jpt, 0.975) AS j_per_token_diff_ci_high,
        quantile_cont(s_epi, 0.025) AS epi_diff_ci_low, quantile_cont(s_epi, 0.975) AS epi_diff_ci_high
    FROM boot GROUP BY pid
), point AS (
    SELECT pid, count(*) AS n_paired_repeats, median(d_jpt) AS j_per_token_diff, median(d_epi) AS epi_diff
    FROM paired GROUP BY pid
), answers AS (
    -- a question answered twice in one run counts right only if every answer is right
    SELECT model, config_id, origin, run_id, question_set_sha256, question_id, bool_and(correct) AS correct
    FROM benchmark_answer GROUP BY ALL
), mcnemar AS (
    SELECT pr.pid, count(*) AS n_questions_paired,
        count(*) FILTER (WHERE xa.correct AND NOT xb.correct) AS mcnemar_b,
        count(*) FILTER (WHERE NOT xa.correct AND xb.correct) AS mcnemar_c
    FROM paired pr
    JOIN answers xa ON xa.model = pr.model AND xa.config_id = pr.config_a AND xa.origin = pr.origin AND xa.run_id = pr.run_a
    JOIN answers xb ON xb.model = pr.model AND xb.config_id = pr.config_b AND xb.origin = pr.origin AND xb.run_id = pr.run_b
        AND xb.question_set_sha256 = xa.question_set_sha256 AND xb.question_id = xa.question_id
    GROUP BY pr.pid
)
SELECT p.model, p.origin, p.power_source, p.simulated, p.config_a, p.config_b,
    p.ppl_a, p.ppl_b, p.ppl_stderr_a, p.ppl_stderr_b, p.ppl_diff, p.match_rule,
    p.j_per_token_a, p.j_per_token_b, pt.j_per_token_diff, iv.j_per_token_diff_ci_low, iv.j_per_token_diff_ci_high,
    p.epi_a, p.epi_b, pt.epi_diff, iv.epi_diff_ci_low, iv.epi_diff_ci_high,
    coalesce(pt.n_paired_repeats, 0) AS n_paired_repeats,
    coalesce(m.n_questions_paired, 0) AS n_questions_paired,
    coalesce(m.mcnemar_b, 0) AS mcnemar_b,
    coalesce(m.mcnemar_c, 0) AS mcnemar_c,
    CASE WHEN m.n_questions_paired > 0 THEN frontier_mcnemar_p(m.mcnemar_b, m.mcnemar_c) END AS mcnemar_p
FROM pairs p
LEFT JOIN point pt USING (pid)
LEFT JOIN intervals iv USING (pid)
LEFT JOIN mcnemar m USING (pid)
ORDER BY p.pid;

-- ---------------------------------------------------------------- pareto_frontier
-- One row per config_summary row: where the configuration stands against the others of its
-- (model, origin, power_source) group in accuracy (higher is better) and J/token (lower is
-- better).
-- Dominance: x dominates y when accuracy_x >= accuracy_y AND j_per_token_x <= j_per_token_y
-- AND at least one is strict. Two configurations with exactly the same point do not dominate
-- each other: both stay on the frontier. A configuration whose accuracy or J/token is NULL
-- (no valid repeat) is no point: it neither dominates nor is on the frontier.
-- Columns:
--   model, origin, power_source, simulated, config_id, kind ('uniform' | 'mixed')
--   accuracy, j_per_token, epi and their _ci_low / _ci_high: config_summary's (composite
--                          accuracy, J/token of the benchmark windows, EPI = J/token / accuracy)
--   on_frontier            not dominated within its group (false where no point)
--   frontier_probability   share of the B bootstrap resamples in which it is on the frontier
--                          (NULL where it has no valid repeat). In resample b every
--                          configuration's point is (median accuracy, median J/token) of its
--                          resampled valid repeats (run_metrics, items ordered by (repeat,
--                          run_id)); the frontier is then taken within the group
--   uniform_dominated      dominated by a uniform configuration of its group
--   mixed_unmatched        kind = 'mixed' AND on_frontier AND no uniform configuration of its
--                          group has accuracy >= AND J/token <= (not even equalled)
-- The frontier is found by a sort, not a pairwise join: y is dominated iff a point of equal
-- accuracy has a lower J/token, or a point of higher accuracy has J/token <= y's.
CREATE OR REPLACE VIEW pareto_frontier AS
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot
), cfg AS MATERIALIZED (
    -- integer ids: g per (model, origin, power_source) group, c per configuration
    SELECT *, dense_rank() OVER (ORDER BY model, origin, power_source) AS g,
        row_number() OVER (ORDER BY model, origin, power_source, config_id) AS c
    FROM config_summary
), items AS MATERIALIZED (
    SELECT f.g, f.c, r.accuracy, r.j_per_token,
        row_number() OVER (PARTITION BY f.c ORDER BY r."repeat", r.run_id) - 1 AS i,
        count(*) OVER (PARTITION BY f.c) AS n
    FROM run_metrics r JOIN cfg f USING (model, config_id, origin, power_source)
    WHERE r.valid
), draws AS (
    SELECT nj.n, bb.b, mqepi_bootstrap_index(p.seed, bb.b, nj.j, nj.n) AS i
    FROM (SELECT n, unnest(range(n)) AS j FROM (SELECT DISTINCT n FROM items)) nj
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
), points AS MATERIALIZED (
    -- b = 0: the configuration's own point; b >= 1: its point in resample b
    SELECT g, c, 0 AS b, accuracy AS acc, j_per_token AS jpt FROM cfg
    WHERE isfinite(accuracy) AND isfinite(j_per_token)
    UNION ALL
    SELECT * FROM (
        SELECT it.g, it.c, d.b, median(it.accuracy) AS acc, median(it.j_per_token) AS jpt
        FROM items it JOIN draws d ON d.n = it.n AND d.i = it.i
        GROUP BY it.g, it.c, d.b)
    WHERE isfinite(acc) AND isfinite(jpt)
), levels AS (
    -- per group, resample and accuracy level: the lowest J/token at that accuracy, and the
    -- lowest at any strictly higher accuracy
    SELECT g, b, acc, level_min,
        min(level_min) OVER (PARTITION BY g, b ORDER BY acc DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS better_min
    FROM (SELECT g, b, acc, min(jpt) AS level_min FROM points GROUP BY g, b, acc)
), judged AS (
    SELECT p.c, p.b, NOT (l.level_min < p.jpt OR coalesce(l.better_min <= p.jpt, false)) AS on_frontier
    FROM points p JOIN levels l USING (g, b, acc)
), probability AS (
    SELECT c, count(*) FILTER (WHERE on_frontier) / CAST(any_value(p.n_boot) AS DOUBLE) AS frontier_probability
    FROM judged CROSS JOIN params p WHERE b > 0 GROUP BY c
), uniform AS (
    -- per configuration: is there a uniform configuration of its group at least as good in
    -- both (weakly), and one that dominates it
    SELECT x.c,
        bool_or(u.accuracy >= x.accuracy AND u.j_per_token <= x.j_per_token) AS weakly_matched,
        bool_or(u.accuracy >= x.accuracy AND u.j_per_token <= x.j_per_token
                AND (u.accuracy > x.accuracy OR u.j_per_token < x.j_per_token)) AS dominated
    FROM cfg x
    JOIN cfg u ON u.g = x.g AND u.kind = 'uniform' AND isfinite(u.accuracy) AND isfinite(u.j_per_token)
    WHERE isfinite(x.accuracy) AND isfinite(x.j_per_token)
    GROUP BY x.c
)
SELECT f.model, f.origin, f.power_source, f.simulated, f.config_id, f.kind,
    f.accuracy, f.j_per_token, f.epi, f.accuracy_ci_low, f.accuracy_ci_high, f.j_per_token_ci_low, f.j_per_token_ci_high,
    coalesce(j.on_frontier, false) AS on_frontier,
    CASE WHEN f.c IN (SELECT c FROM items) THEN coalesce(pr.frontier_probability, 0.0) END AS frontier_probability,
    coalesce(u.dominated, false) AS uniform_dominated,
    coalesce(f.kind = 'mixed', false) AND coalesce(j.on_frontier, false) AND NOT coalesce(u.weakly_matched, false)
        AS mixed_unmatched
FROM cfg f
LEFT JOIN (SELECT c, on_frontier FROM judged WHERE b = 0) j USING (c)
LEFT JOIN probability pr USING (c)
LEFT JOIN uniform u USING (c)
ORDER BY f.c;

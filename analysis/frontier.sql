-- mqepi SQL layer, part 3: perplexity-matched pairs and the Pareto frontier.
--
-- Loaded after summary.sql into the same DuckDB connection (mqepi.results.sql.connect);
-- builds on config_summary (summary.sql), the bootstrap's macros (resamples.sql: run_metrics,
-- config_identity, benchmark_answer), the flips' macros (flips.sql) and the perplexity and kld
-- events (views.sql).
-- analysis/twin_frontier.py computes the same two views independently in Polars/numpy;
-- tests/test_frontier.py compares both. docs/frontier.md explains the rules.
--
-- Tunables (DuckDB variables, read when a view is queried):
--   mqepi_seed           bootstrap seed, 0 .. 2147483647              (default 1234)
--   mqepi_bootstrap      bootstrap resamples B, >= 1                  (default 1000)
--   mqepi_ppl_margin     equivalence margin on perplexity, relative, > 0 (default 0.01: two
--                        configurations are matched when their perplexity ratio is shown to
--                        lie within 1 +/- 1 %)
--   mqepi_kld_margin     equivalence margin on KL divergence, nats, > 0 (default NULL: no
--                        KLD matching)
-- A value out of range fails the query with its name and value.
--
-- Groups: a configuration is (model, config_id, origin, power_source, hardware_id), as in
-- config_summary, except kind 'probe': the per-layer search's sensitivity probes (config_id
-- 'probe-...', mqepi.quant.maps.PROBE_PREFIX) are no results and enter no view of this file
-- nor of kld_frontier.sql (config_summary keeps them; 'searched' configurations are ordinary
-- ones). Pairs and frontiers are formed only inside one (model, origin, power_source,
-- hardware_id) group: lab and community results are never pooled, nor simulated with measured
-- power, nor runs of different hardware (hardware_id 'unknown' is a group of its own).
--
-- The hierarchical bootstrap (resamples.sql; analysis/hierarchical.py): config_summary's
-- resamples, whose resample b draws the repeats, the family's questions and the meter's noise
-- at once. Frontier probabilities and pair intervals use these same draws. Intervals are
-- quantile_cont 0.025 / 0.975 over the B resample statistics (NULL statistics ignored), and
-- NULL where every resample gives the same value (mqepi_degenerate).

-- Exact two-sided binomial (McNemar) p-value for b and c discordant pairs:
-- min(1, 2 * P(X <= min(b, c))) with X ~ Bin(b + c, 1/2); 1 when b + c = 0. The binomial
-- terms are summed in log space (lgamma), so that b + c in the tens of thousands stays finite.
CREATE OR REPLACE MACRO frontier_mcnemar_p(b, c) AS
    CASE WHEN b + c = 0 THEN 1.0
         ELSE least(1.0, 2.0 * list_sum(list_transform(range(least(b, c) + 1),
             lambda i: exp(lgamma(b + c + 1.0) - lgamma(i + 1.0) - lgamma(b + c - i + 1.0) - (b + c) * ln(2.0)))))
    END;

-- ---------------------------------------------------------------- matched_pairs
-- One row per pair of configurations a < b (config_id order; config_summary's effective
-- models, so two names of one model are never a pair; kind 'probe' left out) of the same
-- (model, origin, power_source, hardware_id) that both have a perplexity and are not shown to
-- differ: whether their perplexities are equivalent, by two one-sided tests (TOST) at 5 %
-- each, i.e. a 90 % interval of the difference inside the margin (pairs whose verdict is
-- 'different' are left out: their perplexities differ by more than the margin, so they are no
-- candidates for a matched pair):
--   paired (both have per-chunk log-likelihoods over the same text, context and chunk count):
--     d_k = mean NLL of chunk k under b - under a (nats per token; chunk k's mean over each
--     configuration's valid runs of the latest perplexity event of each run), n chunks;
--     log_ppl_ratio = mean(d) = ln(PPL_b / PPL_a) over those chunks;
--     interval = mean(d) +/- t(0.95, n - 1) * sd(d) / sqrt(n)      (mqepi_t95; n >= 2)
--   unpaired (a side without chunks, events of schema 1): ln(ppl_b / ppl_a) +/- 1.6448536 *
--     sqrt((ppl_stderr_a / ppl_a)^2 + (ppl_stderr_b / ppl_b)^2)   (config_summary medians)
--   ppl_verdict, with L = ln(1 + mqepi_ppl_margin):
--     'matched'       the interval lies inside [-L, L]  (equivalent within the margin)
--     'different'     the interval lies wholly above L or below -L (shown to differ by more)
--     'inconclusive'  otherwise, or no interval (one chunk, or no uncertainty to use)
--   KLD the same way on per-chunk KL divergence against the base (chunk_kld; same base, text,
--   context and chunk count), absolute margin mqepi_kld_margin; without chunks on both sides,
--   or without a margin, the KLD columns past kld_a / kld_b are NULL.
--   matched = ppl_verdict = 'matched' AND (no KLD margin OR kld_verdict = 'matched').
-- Columns:
--   model, origin, power_source, hardware_id, simulated (power_source = 'simulated': NOT measured)
--   config_a, config_b                      the pair, config_a < config_b
--   ppl_a, ppl_b, ppl_stderr_a, ppl_stderr_b   config_summary medians (perplexity, unitless)
--   ppl_diff                                ppl_b - ppl_a
--   match_rule                              the rule in words, with its margins
--   ppl_test                                'paired t over n chunks' | 'unpaired normal (no chunks recorded)'
--   n_chunks                                chunks paired (NULL unpaired)
--   log_ppl_ratio, _ci_low, _ci_high        ln(PPL_b / PPL_a) and its 90 % interval
--   ppl_margin                              mqepi_ppl_margin (relative)
--   ppl_verdict                             'matched' | 'different' | 'inconclusive'
--   kld_a, kld_b                            config_summary medians of kld_mean (nats)
--   kld_diff, kld_diff_ci_low, _ci_high     mean per-chunk KLD difference b - a and its 90 % interval
--   kld_margin, kld_verdict                 mqepi_kld_margin and the verdict (NULL: no KLD matching)
--   matched                                 as above
--   j_per_token_a, j_per_token_b, accuracy_a, accuracy_b, epi_a, epi_b   config_summary medians
--   j_per_token_diff, accuracy_diff, epi_diff (+ _ci_low, _ci_high)
--                                           median over paired repeats of (b - a), and the
--                                           95 % interval of the hierarchical bootstrap: in
--                                           resample b the paired repeats are drawn (stream 0,
--                                           n = paired repeats) and each run's values are its
--                                           values in that resample (the same question draws
--                                           and meter noise on both sides)
--   n_paired_repeats                        repeats paired: repeat number valid in both (one
--                                           run per configuration and repeat: the valid run
--                                           with the smallest run_id)
--   n_questions_paired                      answers paired over those runs by
--                                           (question_set_sha256, question_id, repeat)
--   mcnemar_b, mcnemar_c, mcnemar_p         paired answers a right b wrong, a wrong b right;
--                                           exact two-sided binomial p (NULL: none paired)
--   n_flip_questions, flip_share, flip_share_low, flip_share_high
--                                           answer flips between the pair (flips.sql rules: one
--                                           answer per configuration and question, same
--                                           scoring, both predictions known; every benchmark
--                                           pooled): questions compared, share answered
--                                           differently, Wilson score interval (mqepi_z)
--   note                                    why an interval is missing ('; '-separated), else NULL
CREATE OR REPLACE VIEW matched_pairs AS
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot,
        CASE WHEN CAST(coalesce(getvariable('mqepi_ppl_margin'), 0.01) AS DOUBLE) <= 0
             THEN error('mqepi_ppl_margin must be > 0, got ' || getvariable('mqepi_ppl_margin'))
             ELSE CAST(coalesce(getvariable('mqepi_ppl_margin'), 0.01) AS DOUBLE) END AS ppl_margin,
        CASE WHEN CAST(getvariable('mqepi_kld_margin') AS DOUBLE) <= 0
             THEN error('mqepi_kld_margin must be > 0, got ' || getvariable('mqepi_kld_margin'))
             ELSE CAST(getvariable('mqepi_kld_margin') AS DOUBLE) END AS kld_margin
), cfg AS MATERIALIZED (
    SELECT *, concat_ws('/', model, origin, power_source, hardware_id, config_id) AS ckey,
        row_number() OVER (ORDER BY model, origin, power_source, hardware_id, config_id) AS c
    FROM config_summary WHERE kind IS DISTINCT FROM 'probe'
), items AS MATERIALIZED (
    SELECT * FROM mqepi_boot_items()
), ppl_runs AS (  -- each valid run's latest perplexity event with chunks
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        arg_max({'text': text_sha256, 'context': context, 'nll': chunk_nll},
                {'t': recorded_at_ns, 'e': event_id}) AS v
    FROM perplexity WHERE chunk_nll IS NOT NULL AND len(chunk_nll) > 0 GROUP BY ALL
), kld_runs AS (
    SELECT concat_ws('/', model, config_id, run_id) AS run_key,
        arg_max({'text': base_sha256 || '/' || text_sha256, 'context': context, 'nll': chunk_kld},
                {'t': recorded_at_ns, 'e': event_id}) AS v
    FROM kld WHERE chunk_kld IS NOT NULL AND len(chunk_kld) > 0 GROUP BY ALL
), chunk_rows AS (
    SELECT 'ppl' AS what, it.ckey, it.run_key, r.v.text AS text, r.v.context AS context, len(r.v.nll) AS n,
        unnest(r.v.nll) AS x, unnest(range(len(r.v.nll))) AS k
    FROM ppl_runs r JOIN items it ON it.run_key = r.run_key
    UNION ALL
    SELECT 'kld', it.ckey, it.run_key, r.v.text, r.v.context, len(r.v.nll), unnest(r.v.nll), unnest(range(len(r.v.nll)))
    FROM kld_runs r JOIN items it ON it.run_key = r.run_key
), variants AS (  -- per configuration: its chunks of each (text, context, n), mean over its runs
    SELECT what, ckey, text, context, n, list(x ORDER BY k) AS xs, max(runs) AS runs
    FROM (SELECT what, ckey, text, context, n, k, sum(x ORDER BY run_key) / count(*) AS x,
                 count(DISTINCT run_key) AS runs
          FROM chunk_rows GROUP BY what, ckey, text, context, n, k)
    GROUP BY what, ckey, text, context, n
), chunks AS MATERIALIZED (  -- the variant of most runs (then the greatest text, context, n)
    SELECT what, ckey, arg_max({'text': text, 'context': context, 'n': n, 'xs': xs},
                               {'r': runs, 'text': text, 'context': context, 'n': n}) AS v
    FROM variants GROUP BY what, ckey
), pairs AS MATERIALIZED (
    SELECT row_number() OVER (ORDER BY a.model, a.origin, a.power_source, a.hardware_id, a.config_id, b.config_id) AS pid,
        a.ckey AS ckey_a, b.ckey AS ckey_b,
        a.model, a.origin, a.power_source, a.hardware_id, a.simulated, a.config_id AS config_a, b.config_id AS config_b,
        a.ppl AS ppl_a, b.ppl AS ppl_b, a.ppl_stderr AS ppl_stderr_a, b.ppl_stderr AS ppl_stderr_b,
        b.ppl - a.ppl AS ppl_diff, a.kld_mean AS kld_a, b.kld_mean AS kld_b,
        a.j_per_token AS j_per_token_a, b.j_per_token AS j_per_token_b,
        a.accuracy AS accuracy_a, b.accuracy AS accuracy_b, a.epi AS epi_a, b.epi AS epi_b
    FROM cfg a
    JOIN cfg b ON b.model = a.model AND b.origin = a.origin AND b.power_source = a.power_source
        AND b.hardware_id = a.hardware_id AND a.config_id < b.config_id
    WHERE a.ppl IS NOT NULL AND b.ppl IS NOT NULL
), tests AS (  -- per pair and quantity: the paired chunk differences, else nothing
    SELECT p.pid, w.what,
        list_transform(range(ca.v.n), lambda k: cb.v.xs[k + 1] - ca.v.xs[k + 1]) AS d
    FROM pairs p
    CROSS JOIN (VALUES ('ppl'), ('kld')) w(what)
    JOIN chunks ca ON ca.what = w.what AND ca.ckey = p.ckey_a
    JOIN chunks cb ON cb.what = w.what AND cb.ckey = p.ckey_b
    WHERE ca.v.text = cb.v.text AND ca.v.context = cb.v.context AND ca.v.n = cb.v.n
), paired_tests AS (
    SELECT pid, what, len(d) AS n, list_avg(d) AS mean_d,
        CASE WHEN len(d) >= 2 THEN mqepi_t95(len(d) - 1) * list_stddev_samp(d) / sqrt(len(d)) END AS half
    FROM tests
), equivalence AS (
    SELECT p.pid,
        CASE WHEN t.pid IS NOT NULL THEN printf('paired t over %d chunks', t.n)
             ELSE 'unpaired normal (no chunks recorded)' END AS ppl_test,
        t.n AS n_chunks,
        coalesce(t.mean_d, ln(p.ppl_b) - ln(p.ppl_a)) AS log_ppl_ratio,
        CASE WHEN t.pid IS NOT NULL THEN t.half
             WHEN p.ppl_stderr_a IS NOT NULL AND p.ppl_stderr_b IS NOT NULL
                  AND p.ppl_stderr_a + p.ppl_stderr_b > 0
             THEN 1.6448536269514722 * sqrt(pow(p.ppl_stderr_a / p.ppl_a, 2) + pow(p.ppl_stderr_b / p.ppl_b, 2)) END AS ppl_half,
        k.mean_d AS kld_diff, k.half AS kld_half, k.n AS kld_chunks
    FROM pairs p
    LEFT JOIN paired_tests t ON t.pid = p.pid AND t.what = 'ppl'
    LEFT JOIN paired_tests k ON k.pid = p.pid AND k.what = 'kld'
), verdicts AS (
    SELECT e.*, ln(1 + pa.ppl_margin) AS ppl_limit, pa.ppl_margin, pa.kld_margin,
        CASE WHEN e.ppl_half IS NULL THEN 'inconclusive'
             WHEN e.log_ppl_ratio - e.ppl_half >= -ln(1 + pa.ppl_margin)
                  AND e.log_ppl_ratio + e.ppl_half <= ln(1 + pa.ppl_margin) THEN 'matched'
             WHEN e.log_ppl_ratio - e.ppl_half > ln(1 + pa.ppl_margin)
                  OR e.log_ppl_ratio + e.ppl_half < -ln(1 + pa.ppl_margin) THEN 'different'
             ELSE 'inconclusive' END AS ppl_verdict,
        CASE WHEN pa.kld_margin IS NULL THEN NULL
             WHEN e.kld_half IS NULL THEN 'inconclusive'
             WHEN e.kld_diff - e.kld_half >= -pa.kld_margin AND e.kld_diff + e.kld_half <= pa.kld_margin THEN 'matched'
             WHEN e.kld_diff - e.kld_half > pa.kld_margin OR e.kld_diff + e.kld_half < -pa.kld_margin THEN 'different'
             ELSE 'inconclusive' END AS kld_verdict
    FROM equivalence e CROSS JOIN params pa
), kept AS MATERIALIZED (  -- the pairs not shown to differ: matched or inconclusive
    SELECT p.* FROM pairs p JOIN verdicts v USING (pid)
    WHERE v.ppl_verdict <> 'different' AND coalesce(v.kld_verdict, '') <> 'different'
), reps AS MATERIALIZED (
    -- one valid run per configuration and repeat number: the smallest run_id
    SELECT ckey, "repeat", run_id, run_key, j_per_token, accuracy, epi FROM items
    QUALIFY row_number() OVER (PARTITION BY ckey, "repeat" ORDER BY run_id) = 1
), paired AS MATERIALIZED (
    SELECT p.pid, ra."repeat", p.model, p.origin, ra.run_id AS run_a, rb.run_id AS run_b,
        ra.run_key AS key_a, rb.run_key AS key_b,
        split_part(ra.run_key, '/', 2) AS measured_a, split_part(rb.run_key, '/', 2) AS measured_b,
        rb.j_per_token - ra.j_per_token AS d_jpt, rb.accuracy - ra.accuracy AS d_acc, rb.epi - ra.epi AS d_epi,
        row_number() OVER (PARTITION BY p.pid ORDER BY ra."repeat", ra.run_id) - 1 AS i,
        count(*) OVER (PARTITION BY p.pid) AS n
    FROM kept p
    JOIN reps ra ON ra.ckey = p.ckey_a
    JOIN reps rb ON rb.ckey = p.ckey_b AND rb."repeat" = ra."repeat"
), rr AS MATERIALIZED (  -- an infinite EPI (accuracy 0) gives no EPI difference
    SELECT run_key, b, j_per_token, accuracy, CASE WHEN NOT mqepi_infinite(epi) THEN epi END AS epi
    FROM mqepi_run_resamples()
    WHERE run_key IN (SELECT key_a FROM paired UNION SELECT key_b FROM paired)
), draws AS (
    SELECT nj.n, bb.b, mqepi_bootstrap_draw(p.seed, 0, bb.b, nj.j, nj.n) AS i
    FROM (SELECT n, unnest(range(n)) AS j FROM (SELECT DISTINCT n FROM paired)) nj
    CROSS JOIN params p
    CROSS JOIN (SELECT unnest(range(1, n_boot + 1)) AS b FROM params) bb
), picked AS MATERIALIZED (  -- resample b of a pair: its drawn paired repeats (with repetition)
    SELECT pr.pid, d.b, pr.key_a, pr.key_b
    FROM paired pr JOIN draws d ON d.n = pr.n AND d.i = pr.i
), side_a AS MATERIALIZED (  -- one side at a time: the join never pairs resamples by b alone
    SELECT pk.pid, pk.b, pk.key_b, xa.j_per_token, xa.accuracy, xa.epi
    FROM picked pk JOIN rr xa ON xa.run_key = pk.key_a AND xa.b = pk.b
), boot AS (
    SELECT sa.pid, sa.b, median(xb.j_per_token - sa.j_per_token) AS s_jpt,
        median(xb.accuracy - sa.accuracy) AS s_acc, median(xb.epi - sa.epi) AS s_epi
    FROM side_a sa
    JOIN rr xb ON xb.run_key = sa.key_b AND xb.b = sa.b
    GROUP BY sa.pid, sa.b
), bounds AS (
    SELECT pid,
        quantile_cont(s_jpt, 0.025) AS jpt_lo, quantile_cont(s_jpt, 0.975) AS jpt_hi,
        mqepi_degenerate(min(s_jpt), max(s_jpt)) AS jpt_flat,
        quantile_cont(s_acc, 0.025) AS acc_lo, quantile_cont(s_acc, 0.975) AS acc_hi,
        mqepi_degenerate(min(s_acc), max(s_acc)) AS acc_flat,
        quantile_cont(s_epi, 0.025) AS epi_lo, quantile_cont(s_epi, 0.975) AS epi_hi,
        mqepi_degenerate(min(s_epi), max(s_epi)) AS epi_flat
    FROM boot GROUP BY pid
), point AS (
    SELECT pid, count(*) AS n_paired_repeats, median(d_jpt) AS j_per_token_diff, median(d_acc) AS accuracy_diff,
        median(d_epi) AS epi_diff
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
    JOIN answers xa ON xa.model = pr.model AND xa.config_id = pr.measured_a AND xa.origin = pr.origin AND xa.run_id = pr.run_a
    JOIN answers xb ON xb.model = pr.model AND xb.config_id = pr.measured_b AND xb.origin = pr.origin AND xb.run_id = pr.run_b
        AND xb.question_set_sha256 = xa.question_set_sha256 AND xb.question_id = xa.question_id
    GROUP BY pr.pid
), flip_answers AS MATERIALIZED (  -- flips.sql: one answer per configuration and question
    SELECT * FROM mqepi_flip_answers()
    WHERE ckey IN (SELECT ckey_a FROM kept UNION SELECT ckey_b FROM kept)
), flips AS (
    SELECT p.pid, count(*) FILTER (WHERE xa.predicted IS NOT NULL AND xb.predicted IS NOT NULL) AS n,
        count(*) FILTER (WHERE xa.predicted <> xb.predicted) AS k
    FROM kept p
    JOIN flip_answers xa ON xa.ckey = p.ckey_a
    JOIN flip_answers xb ON xb.ckey = p.ckey_b AND xb.qkey = xa.qkey AND xb.scoring IS NOT DISTINCT FROM xa.scoring
    GROUP BY p.pid
)
SELECT p.model, p.origin, p.power_source, p.hardware_id, p.simulated, p.config_a, p.config_b,
    p.ppl_a, p.ppl_b, p.ppl_stderr_a, p.ppl_stderr_b, p.ppl_diff,
    printf('TOST at 90%%: perplexity ratio within 1 +/- %g%%', v.ppl_margin * 100)
        || CASE WHEN v.kld_margin IS NOT NULL THEN printf(', KLD difference within +/- %g nats', v.kld_margin) ELSE '' END
        AS match_rule,
    v.ppl_test, CAST(v.n_chunks AS BIGINT) AS n_chunks,
    v.log_ppl_ratio, v.log_ppl_ratio - v.ppl_half AS log_ppl_ratio_ci_low, v.log_ppl_ratio + v.ppl_half AS log_ppl_ratio_ci_high,
    v.ppl_margin, v.ppl_verdict,
    p.kld_a, p.kld_b, v.kld_diff, v.kld_diff - v.kld_half AS kld_diff_ci_low, v.kld_diff + v.kld_half AS kld_diff_ci_high,
    v.kld_margin, v.kld_verdict,
    v.ppl_verdict = 'matched' AND (v.kld_margin IS NULL OR coalesce(v.kld_verdict = 'matched', false)) AS matched,
    p.j_per_token_a, p.j_per_token_b, pt.j_per_token_diff,
    CASE WHEN NOT bd.jpt_flat THEN bd.jpt_lo END AS j_per_token_diff_ci_low,
    CASE WHEN NOT bd.jpt_flat THEN bd.jpt_hi END AS j_per_token_diff_ci_high,
    p.accuracy_a, p.accuracy_b, pt.accuracy_diff,
    CASE WHEN NOT bd.acc_flat THEN bd.acc_lo END AS accuracy_diff_ci_low,
    CASE WHEN NOT bd.acc_flat THEN bd.acc_hi END AS accuracy_diff_ci_high,
    p.epi_a, p.epi_b, pt.epi_diff,
    CASE WHEN NOT bd.epi_flat THEN bd.epi_lo END AS epi_diff_ci_low,
    CASE WHEN NOT bd.epi_flat THEN bd.epi_hi END AS epi_diff_ci_high,
    coalesce(pt.n_paired_repeats, 0) AS n_paired_repeats,
    coalesce(m.n_questions_paired, 0) AS n_questions_paired,
    coalesce(m.mcnemar_b, 0) AS mcnemar_b,
    coalesce(m.mcnemar_c, 0) AS mcnemar_c,
    CASE WHEN m.n_questions_paired > 0 THEN frontier_mcnemar_p(m.mcnemar_b, m.mcnemar_c) END AS mcnemar_p,
    CAST(coalesce(fl.n, 0) AS BIGINT) AS n_flip_questions, fl.k / nullif(fl.n, 0) AS flip_share,
    mqepi_wilson_low(fl.k, fl.n, CAST(coalesce(getvariable('mqepi_z'), 1.96) AS DOUBLE)) AS flip_share_low,
    mqepi_wilson_high(fl.k, fl.n, CAST(coalesce(getvariable('mqepi_z'), 1.96) AS DOUBLE)) AS flip_share_high,
    nullif(concat_ws('; ',
        CASE WHEN v.n_chunks = 1 THEN 'one chunk: no interval for the perplexity ratio' END,
        CASE WHEN v.n_chunks IS NULL AND v.ppl_half IS NULL THEN 'no chunks and no perplexity uncertainty: no interval' END,
        CASE WHEN coalesce(pt.n_paired_repeats, 0) = 0 THEN 'no paired repeats: no differences' END,
        CASE WHEN bd.jpt_flat THEN 'J/token difference: every resample gives the same value' END,
        CASE WHEN bd.acc_flat THEN 'accuracy difference: every resample gives the same value' END,
        CASE WHEN bd.epi_flat THEN 'EPI difference: every resample gives the same value' END), '') AS note
FROM kept p
JOIN verdicts v USING (pid)
LEFT JOIN point pt USING (pid)
LEFT JOIN bounds bd USING (pid)
LEFT JOIN mcnemar m USING (pid)
LEFT JOIN flips fl USING (pid)
ORDER BY p.pid;

-- ---------------------------------------------------------------- pareto_frontier
-- One row per config_summary row (kind 'probe' left out): where the configuration stands
-- against the others of its (model, origin, power_source, hardware_id) group in accuracy
-- (higher is better) and J/token (lower is better).
-- Dominance: x dominates y when accuracy_x >= accuracy_y AND j_per_token_x <= j_per_token_y
-- AND at least one is strict. Two configurations with exactly the same point do not dominate
-- each other: both stay on the frontier. A configuration whose accuracy or J/token is NULL
-- (no valid repeat) is no point: it neither dominates nor is on the frontier.
-- Columns:
--   model, origin, power_source, hardware_id, simulated, config_id, kind ('uniform' | 'mixed' |
--                          'searched'; NULL without a quant_config)
--   accuracy, j_per_token, epi and their _ci_low / _ci_high: config_summary's (composite
--                          accuracy, J/token of the benchmark windows, EPI = J/token / accuracy)
--   on_frontier            not dominated within its group (false where no point)
--   frontier_probability   share of the B bootstrap resamples in which it is on the frontier
--                          (NULL where it has no valid repeat). In resample b every
--                          configuration's point is its (accuracy, J/token) in config_summary's
--                          resample b (mqepi_config_resamples: repeats, questions and meter
--                          drawn at once); the frontier is then taken within the group
--   uniform_dominated      dominated by a uniform configuration of its group
--   mixed_unmatched        kind = 'mixed' AND on_frontier AND no uniform configuration of its
--                          group has accuracy >= AND J/token <= (not even equalled)
-- The frontier is found by a sort, not a pairwise join: y is dominated iff a point of equal
-- accuracy has a lower J/token, or a point of higher accuracy has J/token <= y's.
CREATE OR REPLACE VIEW pareto_frontier AS
WITH params AS (
    SELECT mqepi_bootstrap_seed() AS seed, mqepi_bootstrap_resamples() AS n_boot
), cfg AS MATERIALIZED (
    -- integer ids: g per (model, origin, power_source, hardware_id) group, c per configuration
    SELECT *, dense_rank() OVER (ORDER BY model, origin, power_source, hardware_id) AS g,
        row_number() OVER (ORDER BY model, origin, power_source, hardware_id, config_id) AS c,
        concat_ws('/', model, origin, power_source, hardware_id, config_id) AS ckey
    FROM config_summary WHERE kind IS DISTINCT FROM 'probe'
), points AS MATERIALIZED (
    -- b = 0: the configuration's own point; b >= 1: its point in resample b
    SELECT g, c, 0 AS b, accuracy AS acc, j_per_token AS jpt FROM cfg
    WHERE isfinite(accuracy) AND isfinite(j_per_token)
    UNION ALL
    SELECT f.g, f.c, r.b, r.accuracy, r.j_per_token
    FROM mqepi_config_resamples() r JOIN cfg f ON f.ckey = r.ckey
    WHERE isfinite(r.accuracy) AND isfinite(r.j_per_token)
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
SELECT f.model, f.origin, f.power_source, f.hardware_id, f.simulated, f.config_id, f.kind,
    f.accuracy, f.j_per_token, f.epi, f.accuracy_ci_low, f.accuracy_ci_high, f.j_per_token_ci_low, f.j_per_token_ci_high,
    coalesce(j.on_frontier, false) AS on_frontier,
    CASE WHEN f.n_repeats > 0 THEN coalesce(pr.frontier_probability, 0.0) END AS frontier_probability,
    coalesce(u.dominated, false) AS uniform_dominated,
    coalesce(f.kind = 'mixed', false) AND coalesce(j.on_frontier, false) AND NOT coalesce(u.weakly_matched, false)
        AS mixed_unmatched
FROM cfg f
LEFT JOIN (SELECT c, on_frontier FROM judged WHERE b = 0) j USING (c)
LEFT JOIN probability pr USING (c)
LEFT JOIN uniform u USING (c)
ORDER BY f.c;

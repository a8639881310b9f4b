-- mqepi SQL layer, part 5: answer flips. Load after resamples.sql (it reads mqepi_boot_items:
-- run_metrics, config_identity) and before summary.sql (config_summary shows the flip share
-- against the base). analysis/twin_flips.py computes the same in Polars (tests compare both);
-- docs/analysis.md, "Answer flips", explains the rules.
--
-- A flip: a question whose answer (benchmark_answer.predicted, lm-eval's acc: the choice with
-- the highest summed log-likelihood) differs between a configuration and a reference
-- configuration of the same family (model, origin, power_source, hardware_id; config_summary's effective
-- models, config_identity.canonical_id). Accuracy can stay the same while answers flip both
-- ways ("Accuracy is not all you need", Dutta et al., 2024).
--
-- Rules:
--   * one answer per configuration and question (benchmark, question_set_sha256,
--     question_id): of the configuration's valid runs (mqepi_boot_items: those config_summary
--     uses) that answered it, the engine-scored answer (scoring set) first, then the smallest
--     (repeat, run_id), then the earliest recorded (recorded_at_ns, event_id). Repeats are not
--     compared repeat by repeat: a question answered in three repeats would count three times
--     and the Wilson interval, which assumes independent questions, would be too narrow.
--   * compared: the questions both configurations answered under the same scoring rule
--     (scoring IS NOT DISTINCT FROM: a version 1 answer is never compared with an
--     engine-scored one, whose flip would measure the change of scorer), and only where both
--     predictions are known (version 1 rows have predicted NULL for wrong answers).
--   * the base of a family: its configuration whose quant_config (of the family's origin
--     first, then the latest, as config_summary) has kind 'base', or whose map quantizes
--     nothing (every layer group's quant, and token_embd / output where the map names them,
--     is F32, F16 or BF16: the unquantized reference). Several: kind 'base' first, then the
--     smallest config_id. None: the family has no rows in answer_flips.
--
-- Tunables: mqepi_z [1.96], z of the Wilson interval (as run_accuracy).

-- log(sum(exp(xs))), computed stably.
CREATE OR REPLACE MACRO mqepi_logsumexp(xs) AS
    list_max(xs) + ln(list_sum(list_transform(xs, lambda x: exp(x - list_max(xs)))));

-- KL(P || Q) in nats between the answer distributions softmax(p) and softmax(q) of two lists
-- of choice scores (summed log-likelihoods); NULL unless both are non-empty and equally long.
CREATE OR REPLACE MACRO mqepi_choice_kl(p, q) AS
    CASE WHEN p IS NULL OR q IS NULL OR len(p) = 0 OR len(p) <> len(q) THEN NULL
         ELSE list_sum(list_transform(range(1, len(p) + 1), lambda i:
             exp(p[i] - mqepi_logsumexp(p)) * ((p[i] - mqepi_logsumexp(p)) - (q[i] - mqepi_logsumexp(q))))) END;

-- The Wilson score interval of k successes in n at z (NULL when n = 0).
CREATE OR REPLACE MACRO mqepi_wilson_low(k, n, z) AS
    CASE WHEN n > 0 THEN greatest(0.0, (k / n + z * z / (2 * n)) / (1 + z * z / n)
        - z * sqrt((k / n) * (1 - k / n) / n + z * z / (4.0 * n * n)) / (1 + z * z / n)) END;
CREATE OR REPLACE MACRO mqepi_wilson_high(k, n, z) AS
    CASE WHEN n > 0 THEN least(1.0, (k / n + z * z / (2 * n)) / (1 + z * z / n)
        + z * sqrt((k / n) * (1 - k / n) / n + z * z / (4.0 * n * n)) / (1 + z * z / n)) END;

-- One answer per configuration (ckey) and question (qkey), by the rules above.
CREATE OR REPLACE MACRO mqepi_flip_answers() AS TABLE
SELECT it.g, it.ckey, it.model, it.origin, it.power_source, it.hardware_id, it.config_id, a.benchmark,
    concat_ws('/', a.benchmark, a.question_set_sha256, a.question_id) AS qkey,
    a.predicted, a.correct, a.choice_scores, a.scoring
FROM benchmark_answer a
JOIN mqepi_boot_items() it ON it.run_key = concat_ws('/', a.model, a.config_id, a.run_id)
QUALIFY row_number() OVER (PARTITION BY it.ckey, a.benchmark, a.question_set_sha256, a.question_id
                           ORDER BY a.scoring IS NULL, it."repeat" NULLS LAST, it.run_id, a.recorded_at_ns, a.event_id) = 1;

-- The reference configuration (ckey) of each family g: its base where one was measured, else
-- its most precise quantized configuration (highest bits/weight in its quantization events,
-- then the smallest name): the closest to the base that the family measured.
CREATE OR REPLACE MACRO mqepi_flip_bases() AS TABLE
WITH configs AS (
    SELECT DISTINCT g, ckey, model, origin, config_id FROM mqepi_boot_items()
), chosen AS (  -- the config's quant_config: of the family's origin first, then the latest
    SELECT s.g, s.ckey, s.config_id,
        arg_max({'kind': c.kind, 'map_json': c.map_json},
                {'o': c.origin = s.origin, 't': c.recorded_at_ns, 'e': c.event_id}) AS v
    FROM configs s
    JOIN (SELECT *, concat_ws('/', model, config_id) AS config_key FROM quant_config) c
        ON c.config_key = concat_ws('/', s.model, s.config_id)
    GROUP BY s.g, s.ckey, s.config_id
), judged AS (
    SELECT g, ckey, config_id, coalesce(v.kind = 'base', false) AS kind_base,
        CASE WHEN json_valid(v.map_json) THEN
            try(from_json(json_extract(v.map_json, '$.layer_groups'), '[{"quant": "VARCHAR"}]')) END AS groups,
        CASE WHEN json_valid(v.map_json) THEN json_extract_string(v.map_json, '$.token_embd') END AS token_embd,
        CASE WHEN json_valid(v.map_json) THEN json_extract_string(v.map_json, '$.output') END AS output
    FROM chosen
), candidates AS (
    SELECT g, ckey, config_id, kind_base FROM judged
    WHERE kind_base
       OR (len(groups) > 0
           AND list_bool_and(list_transform(groups, lambda x: coalesce(upper(x.quant) IN ('F32', 'F16', 'BF16'), false)))
           AND coalesce(upper(token_embd) IN ('F32', 'F16', 'BF16'), token_embd IS NULL)
           AND coalesce(upper(output) IN ('F32', 'F16', 'BF16'), output IS NULL))
), precision AS (  -- a family without a base: its most precise quantized configuration
    SELECT model, config_id, max(bits_per_weight) AS bpw FROM quantization GROUP BY ALL
), ranked AS (
    SELECT g, ckey, config_id, kind_base, 1 AS tier, CAST(NULL AS DOUBLE) AS bpw FROM candidates
    UNION ALL
    SELECT c.g, c.ckey, c.config_id, false, 2, p.bpw
    FROM configs c JOIN precision p ON p.model = c.model AND p.config_id = c.config_id
)
SELECT g, ckey, config_id FROM ranked
QUALIFY row_number() OVER (PARTITION BY g ORDER BY tier, kind_base DESC, bpw DESC, config_id) = 1;

-- Every configuration against a reference of its family: the base (flip_reference NULL)
-- or the configuration named flip_reference (its config_summary name, or a name
-- one of its valid runs was measured under). One row per (configuration, benchmark) with a
-- question both answered, plus benchmark 'all' (every benchmark pooled); the reference itself
-- has no row.
CREATE OR REPLACE MACRO mqepi_flips(flip_reference) AS TABLE
WITH z AS (
    SELECT CAST(coalesce(getvariable('mqepi_z'), 1.96) AS DOUBLE) AS z
), answers AS MATERIALIZED (
    SELECT * FROM mqepi_flip_answers()
), refs AS (
    SELECT g, ckey, config_id FROM mqepi_flip_bases() WHERE flip_reference IS NULL
    UNION ALL
    SELECT DISTINCT g, ckey, config_id FROM mqepi_boot_items()
    WHERE flip_reference IS NOT NULL
      AND ckey IN (SELECT ckey FROM mqepi_boot_items()
                   WHERE config_id = flip_reference OR measured_as = flip_reference)
), joined AS (
    SELECT c.g, c.ckey, f.config_id AS reference_config_id, c.benchmark, c.qkey,
        r.predicted IS NOT NULL AND c.predicted IS NOT NULL AS known,
        r.predicted <> c.predicted AS flipped, r.correct AS ref_correct, c.correct AS correct,
        mqepi_choice_kl(r.choice_scores, c.choice_scores) AS kl
    FROM refs f
    JOIN answers r ON r.ckey = f.ckey
    JOIN answers c ON c.g = r.g AND c.qkey = r.qkey AND c.ckey <> r.ckey
        AND c.scoring IS NOT DISTINCT FROM r.scoring
), rows AS (
    SELECT * FROM joined
    UNION ALL
    SELECT * REPLACE ('all' AS benchmark) FROM joined
), counts AS (
    SELECT g, ckey, reference_config_id, benchmark,
        count(*) FILTER (WHERE known) AS n_questions,
        count(*) FILTER (WHERE known AND flipped) AS n_flipped,
        count(*) FILTER (WHERE known AND ref_correct AND NOT correct) AS n_right_to_wrong,
        count(*) FILTER (WHERE known AND NOT ref_correct AND correct) AS n_wrong_to_right,
        count(kl) AS n_kl_questions,
        avg(kl ORDER BY qkey) AS choice_kl_nats
    FROM rows GROUP BY g, ckey, reference_config_id, benchmark
), names AS (
    SELECT DISTINCT ckey, model, origin, power_source, hardware_id, config_id FROM answers
)
SELECT n.model, n.origin, n.power_source, n.hardware_id, n.config_id, k.reference_config_id, k.benchmark,
    CAST(k.n_questions AS BIGINT) AS n_questions, CAST(k.n_flipped AS BIGINT) AS n_flipped,
    k.n_flipped / nullif(k.n_questions, 0) AS flip_share,
    mqepi_wilson_low(k.n_flipped, k.n_questions, z.z) AS flip_share_low,
    mqepi_wilson_high(k.n_flipped, k.n_questions, z.z) AS flip_share_high,
    CAST(k.n_right_to_wrong AS BIGINT) AS n_right_to_wrong, CAST(k.n_wrong_to_right AS BIGINT) AS n_wrong_to_right,
    CAST(k.n_kl_questions AS BIGINT) AS n_kl_questions, k.choice_kl_nats
FROM counts k
JOIN names n ON n.ckey = k.ckey
CROSS JOIN z
ORDER BY n.model, n.origin, n.power_source, n.hardware_id, n.config_id, k.reference_config_id, k.benchmark = 'all', k.benchmark;

-- ---------------------------------------------------------------- answer_flips
-- One row per configuration (other than the base) of a family with a base, and benchmark
-- answered by both (plus 'all': every benchmark pooled):
--   model, origin, power_source, hardware_id, config_id   the configuration (config_summary's name)
--   reference_config_id    the base it is compared with
--   benchmark              'mmlu' | 'arc_challenge' | 'hellaswag' | 'all'
--   n_questions            questions compared: both answered, same scoring, both predictions known
--   n_flipped              of those, predicted differs
--   flip_share             n_flipped / n_questions (NULL when n_questions = 0)
--   flip_share_low/high    Wilson score interval, z = mqepi_z (default 1.96, 95 %), over the
--                          questions (one answer per configuration and question: repeat-to-repeat
--                          variation is not in it)
--   n_right_to_wrong       compared questions the reference got right and this one wrong
--   n_wrong_to_right       ... wrong and right (both flips: each <= n_flipped together)
--   n_kl_questions         compared questions where both have choice_scores of equal length
--   choice_kl_nats         mean over those of KL(reference || configuration) between
--                          softmax(choice_scores) of each, nats (NULL: none)
-- Against any other reference: FROM answer_flips_vs('<config_id>') (the same columns).
CREATE OR REPLACE VIEW answer_flips AS FROM mqepi_flips(NULL);
CREATE OR REPLACE MACRO answer_flips_vs(reference) AS TABLE FROM mqepi_flips(reference);

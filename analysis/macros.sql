-- mqepi SQL macros shared by the analysis views (loaded first: before views.sql).
--
-- The bootstrap's item index of draw j of resample b among n items (BIGINT arithmetic,
-- docs/analysis.md): two MINSTD steps, each followed by an xor-shift (without it the draws
-- follow a lattice: for n = 3 only 9 of the 27 resamples occur).
CREATE OR REPLACE MACRO mqepi_bootstrap_step(x) AS
    xor((CAST(x AS BIGINT) * 48271) % 2147483647, ((CAST(x AS BIGINT) * 48271) % 2147483647) >> 13);
CREATE OR REPLACE MACRO mqepi_bootstrap_index(seed, b, j, n) AS
    mqepi_bootstrap_step(mqepi_bootstrap_step(
        (CAST(seed AS BIGINT) * 1000003 + CAST(b AS BIGINT) * 10007 + CAST(j AS BIGINT) * 101) % 2147483647))
    % CAST(n AS BIGINT);

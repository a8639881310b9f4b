"""Per-chunk perplexity and KLD (schema version 2 of ``perplexity`` and ``kld``), and lakes and
bundles of the older schema version 1.

The chunks are recovered from the running means llama-perplexity prints; they are checked
here on hand-made output lines (computed by hand), on the real tool's output for the real
SmolLM2 model, and against the tool's own per-token log-probabilities (its logits files),
an independent record of every scored token."""

from __future__ import annotations

import glob
import math
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandera.polars as pa
import polars as pl
import pytest
from factories import rows_for

from mqepi.community.problems import BundleRejected
from mqepi.community.validate import validate_bundle
from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.lake.verify import seed_name
from mqepi.meter.stream import RunKey
from mqepi.quality import evaluate as ev
from mqepi.quality import perplexity as ppl_mod
from mqepi.quality.scoring import ScoringError
from mqepi.quant import assets, maps, quantize, toolchain
from mqepi.results import sql
from mqepi.schemas import EVENT_TYPES, RUN_KEYS, EventSpec
from mqepi.schemas.events import SHA256, RunBound

CONTEXT, CHUNKS = 128, 4
#: Tokens scored per chunk of 128: positions 64 .. 126 each predict the next token.
SCORED = 128 - 64 - 1


def stamped(text: str) -> list[tuple[int, str]]:
    """Output lines as the executor gives them: (arrival stamp, line with its newline)."""
    return [(1000 + i, line) for i, line in enumerate(text.splitlines(keepends=True))]


# ------------------------------------------------------------------ hand-made output lines

# 3 chunks of n_ctx = 8: each scores 8 - 4 - 1 = 3 tokens. Chunk means 2.0, 3.0, 4.0 give the
# running means 2.0, (2+3)/2 = 2.5, (2+3+4)/3 = 3.0, and running PPL exp(2), exp(2.5), exp(3).
PPL_OUT = """\
0.00.379.399 I perplexity: tokenizing the input ..
0.00.561.707 I perplexity: calculating perplexity over 3 chunks, n_ctx=8, batch_size=2048, n_seq=256
0.02.473.708 I perplexity: 1.91 seconds per pass - ETA 0.00 minutes
       0  7.3891  2.000000  0.100000
       0  12.1825  2.500000  0.100000
       0  20.0855  3.000000  0.100000

0.02.519.569 I Final estimate: PPL = 20.0855 +/- 1.00000
"""

KLD_SUMMARY = """
====== Perplexity statistics ======
Mean PPL(Q)                   :  20.100000 ±   1.000000
Mean PPL(base)                :  20.085500 ±   1.000000
Mean ln(PPL(Q)/PPL(base))     :   0.000722 ±   0.000100
Mean PPL(Q)/PPL(base)         :   1.000722 ±   0.000100

====== KL divergence statistics ======
Mean    KLD:   {mean} ±   0.001000
Maximum KLD:   0.400000
99.0%   KLD:   0.300000
Median  KLD:   0.020000

====== Token probability statistics ======
Same top p: 97.000 ± 1.000 %
"""


def kld_out(running: list[str], mean: str = "0.030000", numbers: list[int] | None = None) -> str:
    """A KLD table of chunks of n_ctx = 8 with these running mean KLDs, and the summary."""
    numbers = numbers or list(range(1, len(running) + 1))
    rows = "".join(f"{n:4d}      20.0855 ±    1.0000       0.00072 ±    0.00010    {r:>10} ±    0.00100"
                   f"     1.000 ±  0.100 %     97.000 ±  1.000 %\n" for n, r in zip(numbers, running))
    return (f"0.00.475.001 I kl_divergence: computing over {len(running)} chunks, n_ctx=8, batch_size=2048, n_seq=256\n"
            "0.03.066.250 I kl_divergence: 2.59 seconds per pass - ETA 0.00 minutes\n\n"
            "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS"
            "            Same top p\n" + rows + KLD_SUMMARY.format(mean=mean))


def test_chunk_nll_recovered_from_hand_made_rows():
    result = ppl_mod.parse_perplexity(stamped(PPL_OUT), tokens=24)
    assert result.chunk_nll == [2.0, 3.0, 4.0] and result.chunk_tokens == 3 and result.chunk_problem is None
    assert (result.ppl, result.ppl_stderr, result.tokens) == (20.0855, 1.0, 24)
    # the window: from the "calculating perplexity over" line to the last chunk row
    assert (result.start_ns, result.end_ns) == (1001, 1005)
    assert abs(math.exp(sum(result.chunk_nll) / 3) - result.ppl) < 1e-4


def test_chunk_kld_recovered_from_hand_made_table():
    # running means 0.01, 0.02, 0.03 over 3 equal chunks: chunks 0.01, 2*0.02 - 0.01, 3*0.03 - 2*0.02
    out = ppl_mod.parse_kld(stamped(kld_out(["0.01000", "0.02000", "0.03000"])))
    assert out["chunk_kld"] == [0.01, 0.03, 0.05] and out["chunk_tokens"] == 3 and out["chunk_problem"] is None
    assert out["kld_mean"] == 0.03 and out["same_top_p"] == 0.97
    assert out["end_ns"] - out["start_ns"] == 6  # the computing line to the last table row


@pytest.mark.parametrize(("text", "problem"), [
    (PPL_OUT.replace("       0  20.0855  3.000000  0.100000\n", ""), "2 per-chunk rows for the 3 chunks"),
    (PPL_OUT.replace("PPL = 20.0855", "PPL = 21.0000"), "is not the final PPL 21.0"),
    (PPL_OUT.replace("12.1825  2.500000", "12.1825  2.600000"), "chunk 2: running PPL 12.1825 is not exp"),
    (PPL_OUT.replace("12.1825  2.500000", "nan  nan"), "chunk 2: running PPL nan, mean NLL nan (not finite)"),
    # --ppl-output-type 0 (overridden through extra_args): the running PPLs on one line
    (PPL_OUT.replace("       0  7.3891  2.000000  0.100000\n       0  12.1825  2.500000  0.100000\n"
                     "       0  20.0855  3.000000  0.100000\n", "[1]7.3891,[2]12.1825,[3]20.0855,\n"),
     "no per-chunk rows"),
])
def test_unusable_chunk_rows_leave_the_chunks_null_and_say_why(text, problem):
    result = ppl_mod.parse_perplexity(stamped(text))
    assert result.chunk_nll is None and result.chunk_tokens is None
    assert problem in result.chunk_problem
    assert result.ppl == float(text.split("PPL = ")[1].split()[0])  # the final estimate is still read


def test_window_ends_at_the_running_line_of_output_type_0():
    text = PPL_OUT.replace("       0  7.3891  2.000000  0.100000\n       0  12.1825  2.500000  0.100000\n"
                           "       0  20.0855  3.000000  0.100000\n", "[1]7.3891,[2]12.1825,[3]20.0855,\n")
    result = ppl_mod.parse_perplexity(stamped(text))
    assert (result.start_ns, result.end_ns) == (1001, 1003)


def test_no_final_estimate_raises():
    with pytest.raises(ScoringError, match="Final estimate"):
        ppl_mod.parse_perplexity(stamped(PPL_OUT.replace("Final estimate", "Finale")))


@pytest.mark.parametrize(("running", "kwargs", "problem"), [
    (["0.01000", "0.02000"], {}, "2 rows in the chunk table for the 3 chunks"),  # one row lost
    (["0.01000", "0.02000", "0.03000"], {"mean": "0.031000"}, "is not the final Mean KLD 0.031"),
    (["0.01000", "0.02000", "0.03000"], {"numbers": [1, 3, 2]}, "row 2 of the chunk table is numbered 3"),
    (["0.01000", "nan", "0.03000"], {}, "chunk 2: running mean KLD nan (not finite)"),
])
def test_unusable_kld_table_leaves_the_chunks_null_and_says_why(running, kwargs, problem):
    text = kld_out(running, **kwargs)
    if len(running) == 2:
        text = text.replace("computing over 2 chunks", "computing over 3 chunks")
    out = ppl_mod.parse_kld(stamped(text))
    assert out["chunk_kld"] is None and out["chunk_tokens"] is None and problem in out["chunk_problem"]
    assert out["kld_mean"] == float(kwargs.get("mean", "0.03"))


@pytest.mark.parametrize(("decimals", "half_ulp"), [(6, ppl_mod.NLL_HALF_ULP), (5, ppl_mod.KLD_ROW_HALF_ULP)])
def test_recovery_error_within_the_documented_bound(decimals, half_ulp):
    """200 chunks of known means, their running means printed as the tool prints them: chunk k
    comes back within (2k - 1) half units of the last printed decimal (docs/quality.md)."""
    rng = random.Random(7)
    per_chunk = 255
    true = [rng.uniform(0.0, 4.0) for _ in range(200)]
    running = [float(f"{sum(true[:k]) / k:.{decimals}f}") for k in range(1, len(true) + 1)]
    got = ppl_mod.chunk_means(running, per_chunk, decimals)
    errors = [abs(g - t) for g, t in zip(got, true)]
    assert all(e <= (2 * k - 1) * half_ulp + 1e-12 for k, e in enumerate(errors, 1))
    assert max(errors[:10]) < 20 * half_ulp  # small for the first chunks
    assert abs(sum(got) / len(got) - running[-1]) < 1e-9  # the chunks average to the last running mean


# ------------------------------------------------------------------ the real tool on SmolLM2

def _logits_file(path: Path) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """The tokens (chunk, position) of a llama-perplexity ``--kl-divergence-base`` file and its
    per-token log-probabilities of one chunk (scored token, vocabulary). The file: ``_logits_``,
    n_ctx, n_vocab, n_chunk, the tokens, then per scored token two floats (scale, min log-prob)
    and n_vocab uint16 steps, padded to an even count: log-prob = scale * step + min
    (perplexity.cpp, log_softmax)."""
    data = path.read_bytes()
    assert data[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", data[8:20])
    end = 20 + 4 * n_ctx * n_chunk
    tokens = np.frombuffer(data[20:end], dtype=np.int32).reshape(n_chunk, n_ctx)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = np.frombuffer(data[end:], dtype=np.uint16).reshape(n_chunk, ppl_mod.scored_per_chunk(n_ctx), nv)

    def logp(chunk: int) -> np.ndarray:
        head = rows[chunk, :, :4].copy().view(np.float32).astype(np.float64)
        return head[:, 0:1] * rows[chunk, :, 4:4 + n_vocab] + head[:, 1:2]

    return tokens, logp


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The Q2_K-heavy SmolLM2 scored against its F16 base (context 128, 4 chunks) into a lake,
    with both models' logits files."""
    tools, base = toolchain.ensure(), assets.ensure_base_model()
    profile = maps.load_profile("smollm2-135m")
    qmap = maps.load_map(maps.maps_dir("smollm2-135m") / "mix_extreme_late.json", profile)
    quantized = quantize.quantize(qmap, profile, base.path, base.sha256, tools.tool("llama-quantize"),
                                  tools.llama_cpp_commit, toolchain.cache_root() / "gguf")
    gguf = quantized.path
    tmp = tmp_path_factory.mktemp("chunks")
    text = ev.heldout_text(tmp / "cache")
    tool = tools.tool("llama-perplexity")
    # both logits files cached with the quantizations (per model file, text, context, chunks)
    cache = toolchain.cache_root() / "kld"
    base_file = ppl_mod.base_logits(tool, base.path, text.path, CONTEXT, CHUNKS, cache, base.sha256, text.sha256,
                                    threads=2)
    q_file = ppl_mod.base_logits(tool, gguf, text.path, CONTEXT, CHUNKS, cache, quantized.file_sha256, text.sha256,
                                 threads=2)
    lake = Lake(tmp / "lake")
    lake.init()
    warnings: list[str] = []
    ppl, kld = ppl_mod.run_perplexity(tool, gguf, text.path, context=CONTEXT, chunks=CHUNKS, text_sha256=text.sha256,
                                      base_logits_path=base_file, base_sha256=base.sha256, threads=2, lake=lake,
                                      key=RunKey("smollm2-135m", "mix_extreme_late", "r-chunks"),
                                      progress=lambda line: warnings.append(line) if line.startswith("warning:") else None)
    return {"ppl": ppl, "kld": kld, "lake": lake, "base_file": base_file, "q_file": q_file, "warnings": warnings}


def test_real_run_records_chunk_nll(measured):
    ppl, lake = measured["ppl"], measured["lake"]
    assert ppl.chunk_problem is None and not measured["warnings"]
    assert len(ppl.chunk_nll) == CHUNKS and ppl.chunk_tokens == SCORED
    # exp(mean chunk NLL) is the final PPL within the printing: PPL to 4 decimals, mean NLL to 6
    assert abs(math.exp(sum(ppl.chunk_nll) / CHUNKS) - ppl.ppl) <= 0.5e-4 + ppl.ppl * 0.5e-6 * 1.001
    event = lake.read("perplexity").row(0, named=True)
    assert event["chunk_nll"] == ppl.chunk_nll and event["chunk_tokens"] == SCORED and event["schema_version"] == 2
    assert event["ppl"] == ppl.ppl and event["tokens"] == CONTEXT * CHUNKS
    assert lake.verify().ok


def test_real_chunk_nll_matches_the_tools_per_token_log_probs(measured):
    """The quantized model's own logits file holds the log-probability of every scored token,
    rounded to steps of at most 16/65535 nats and floored 16 nats below the token's top one:
    each chunk's mean NLL from it equals the recovered chunk within half a step (plus 1e-5 for
    the file's float32 scale and minimum) and the recovery bound, where no scored token of the
    chunk is floored; where one is, the file's NLL is lower than the true one."""
    tokens, logp = _logits_file(measured["q_file"])
    first = CONTEXT // 2
    got = measured["ppl"].chunk_nll
    exact = 0
    for k, recovered in enumerate(got, 1):
        lp = logp(k - 1)
        nxt = tokens[k - 1, first + 1:first + 1 + SCORED]  # the token each scored position predicts
        scored = lp[np.arange(SCORED), nxt]
        tol = 0.5 * 16 / 65535 + 1e-5 + (2 * k - 1) * ppl_mod.NLL_HALF_ULP
        if (scored <= lp.min(axis=1)).any():  # a floored token: its true log-prob is lower still
            assert -scored.mean() <= recovered + tol, (k, recovered, -scored.mean())
        else:
            assert abs(-scored.mean() - recovered) <= tol, (k, recovered, -scored.mean())
            exact += 1
    assert exact >= 2
    assert max(got) - min(got) > 0.1  # the chunks differ: a chunk out of place would fail


def test_real_run_records_chunk_kld(measured):
    kld, lake = measured["kld"], measured["lake"]
    assert kld["chunk_problem"] is None
    assert len(kld["chunk_kld"]) == CHUNKS and kld["chunk_tokens"] == SCORED
    # the chunks average to the summary's Mean KLD (printed to 6 decimals, the table to 5)
    assert abs(sum(kld["chunk_kld"]) / CHUNKS - kld["kld_mean"]) <= ppl_mod.KLD_ROW_HALF_ULP + ppl_mod.KLD_MEAN_HALF_ULP
    event = lake.read("kld").row(0, named=True)
    assert event["chunk_kld"] == kld["chunk_kld"] and event["chunk_tokens"] == SCORED and event["schema_version"] == 2


def test_real_chunk_kld_matches_the_two_logits_files(measured):
    """KL(base || Q) per scored token from the two logits files (the tool's sum over tokens whose
    base log-prob is above -16), averaged per chunk, equals the recovered chunk KLD. The Q file
    rounds Q's log-probs (half a step, <= 1.2e-4) and floors those 16 below its top, hence 1e-3;
    the chunks lie >= 0.01 apart, so a chunk out of place fails."""
    tb, base = _logits_file(measured["base_file"])
    tq, quant = _logits_file(measured["q_file"])
    assert (tb == tq).all()
    expected = []
    for chunk in range(CHUNKS):
        lb, lq = base(chunk), quant(chunk)
        expected.append(np.where(lb > -16, np.exp(lb) * (lb - lq), 0.0).sum(axis=1).mean())
    got = measured["kld"]["chunk_kld"]
    assert np.abs(np.array(got) - expected).max() < 1e-3, (got, expected)
    gaps = np.diff(np.sort(expected))
    assert gaps.min() > 0.01


# ------------------------------------------------------------------ schema version 1 lakes and bundles

class PerplexityV1(RunBound):
    """``perplexity`` as schema version 1 had it (before its chunks)."""

    text_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    context: pl.Int32 = pa.Field(gt=0)
    chunks: pl.Int32 = pa.Field(gt=0)
    tokens: pl.Int64 = pa.Field(gt=0)
    ppl: pl.Float64 = pa.Field(ge=1, le=1e9)
    ppl_stderr: pl.Float64 = pa.Field(ge=0, le=1e9)


class KldV1(RunBound):
    """``kld`` as schema version 1 had it (before its chunks)."""

    base_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    text_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    context: pl.Int32 = pa.Field(gt=0)
    chunks: pl.Int32 = pa.Field(gt=0)
    kld_mean: pl.Float64 = pa.Field(ge=0, le=1e6)
    kld_mean_stderr: pl.Float64 = pa.Field(nullable=True, ge=0)
    kld_median: pl.Float64 = pa.Field(ge=0, le=1e6)
    kld_p99: pl.Float64 = pa.Field(ge=0, le=1e6)
    ppl_ratio: pl.Float64 = pa.Field(gt=0, le=1e6)
    ppl_ratio_stderr: pl.Float64 = pa.Field(nullable=True, ge=0)
    same_top_p: pl.Float64 = pa.Field(ge=0, le=1)


V1 = {"perplexity": EventSpec("perplexity", PerplexityV1, RUN_KEYS, version=1),
      "kld": EventSpec("kld", KldV1, RUN_KEYS, version=1)}


def test_version_1_models_are_the_current_ones_without_the_added_columns():
    for name, old in V1.items():
        spec = EVENT_TYPES[name]
        assert spec.version == 2 and spec.added
        assert list(old.polars_schema) == [c for c in spec.polars_schema if c not in spec.added]
        assert all(spec.polars_schema[c] == t for c, t in old.polars_schema.items())


@pytest.fixture
def old_lake(tmp_path, monkeypatch) -> Path:
    """A lake written by an mqepi of schema version 1 of perplexity and kld (seeds and events)."""
    with monkeypatch.context() as m:
        for name, spec in V1.items():
            m.setitem(EVENT_TYPES, name, spec)
        lake = Lake(tmp_path / "lake")
        lake.init()
        lake.record("perplexity", rows_for("perplexity", 2, run_id="old-run"))
        lake.record("kld", rows_for("kld", 1, run_id="old-run"))
    return tmp_path / "lake"


def _seeds(root: Path, event_type: str) -> list[str]:
    return sorted(Path(p).name for p in glob.glob(f"{root}/{event_type}/model=_seed/*/*.parquet"))


def test_old_lake_reads_with_null_chunks_through_lake_and_sql(old_lake):
    for t in ("perplexity", "kld"):
        assert _seeds(old_lake, t) == ["schema-v1.parquet"]
        assert pl.read_parquet(glob.glob(f"{old_lake}/{t}/model=smollm2-135m/*/ev-*.parquet")[0]).columns == [
            c for c in EVENT_TYPES[t].file_columns if c not in EVENT_TYPES[t].added]
    lake = Lake(old_lake)
    df = lake.read("perplexity")
    assert df.height == 2 and df["schema_version"].to_list() == [1, 1]
    assert df.schema["chunk_nll"] == pl.List(pl.Float64) and df["chunk_nll"].null_count() == 2
    assert df["chunk_tokens"].null_count() == 2 and df["ppl"].to_list() == [22.0, 23.0]
    assert lake.read("kld")["chunk_kld"].to_list() == [None]
    assert lake.verify().ok  # version 1 files (ids over their own columns) and the v1 seeds are valid

    con = sql.connect(lake)  # upgrades: the current seeds join the old ones
    for t in ("perplexity", "kld"):
        assert _seeds(old_lake, t) == ["schema-v1.parquet", "schema-v2.parquet"]
    rows = con.sql("SELECT ppl, chunk_nll, chunk_tokens FROM perplexity ORDER BY ppl").fetchall()
    assert rows == [(22.0, None, None), (23.0, None, None)]
    assert con.sql("SELECT typeof(chunk_nll), typeof(chunk_tokens) FROM perplexity LIMIT 1").fetchall() == [
        ("DOUBLE[]", "INTEGER")]
    assert con.sql("SELECT chunk_kld FROM kld").fetchall() == [(None,)]

    # a version 2 event beside the old ones: both read, the old with nulls
    lake.record("perplexity", {**rows_for("perplexity", 1, run_id="new-run", start=5),
                               "chunk_nll": [[3.0, 3.2]], "chunk_tokens": [255]})
    con = sql.connect(lake)
    got = con.sql("SELECT run_id, schema_version, chunk_nll, chunk_tokens FROM perplexity ORDER BY ppl").fetchall()
    assert got == [("old-run", 1, None, None), ("old-run", 1, None, None), ("new-run", 2, [3.0, 3.2], 255)]
    polars = lake.read("perplexity").sort("ppl").select("schema_version", "chunk_nll", "chunk_tokens").rows()
    assert polars == [(1, None, None), (1, None, None), (2, [3.0, 3.2], 255)]
    assert lake.verify().ok, lake.verify().problems


def _commit(lake: Lake, event_type: str, partition: tuple[str, str], name: str, df: pl.DataFrame,
            runs: tuple[str, ...] = ()) -> None:
    """Commit one file as a writer would (the lake's own write and commit path)."""
    with lake.transaction("test"):
        lake._commit_file(event_type, partition, name, df.to_arrow(), runs)


def test_verify_accepts_every_seed_version_up_to_the_current_and_no_other(old_lake):
    lake = Lake(old_lake)
    lake.init()
    assert lake.verify().ok and _seeds(old_lake, "kld") == ["schema-v1.parquet", "schema-v2.parquet"]
    current = pl.DataFrame(schema=EVENT_TYPES["kld"].polars_schema).select(EVENT_TYPES["kld"].file_columns)
    _commit(lake, "kld", ("_seed", "_seed"), seed_name(3), current)
    problems = lake.verify().problems
    assert [(p.kind, Path(p.path).name) for p in problems] == [("layout", "schema-v3.parquet")]
    assert "newer than the current 2 of kld" in problems[0].detail


def test_verify_rejects_a_seed_without_its_versions_columns(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    spec = EVENT_TYPES["perplexity"]
    # a version 1 seed with the chunk columns of version 2
    _commit(lake, "perplexity", ("_seed", "_seed"), seed_name(1),
            pl.DataFrame(schema=spec.polars_schema).select(spec.file_columns))
    problems = lake.verify().problems
    assert len(problems) == 1 and problems[0].kind == "schema" and "unexpected chunk_nll" in problems[0].detail


@pytest.mark.parametrize(("change", "message"), [
    # a file of version 2 must carry the version's columns
    (lambda d: d.drop("chunk_nll", "chunk_tokens"), "lacks column 'chunk_nll', which events of the current schema"),
    # a version 1 event holds no chunk values
    (lambda d: d.with_columns(schema_version=pl.lit(1, pl.Int32), chunk_tokens=pl.lit(63, pl.Int32)),
     "column 'chunk_tokens' holds a value in an event of schema version 1"),
    (lambda d: d.drop("chunk_nll", "chunk_tokens").with_columns(schema_version=pl.lit(3, pl.Int32)),
     "schema_version is newer than the current 2"),
])
def test_verify_rejects_events_inconsistent_with_their_version(tmp_path, change, message):
    lake = Lake(tmp_path / "lake")
    lake.init()
    df = change(events.build("perplexity", rows_for("perplexity", 2)))
    df = df.with_columns(events.content_ids(df))
    spec = EVENT_TYPES["perplexity"]
    _commit(lake, "perplexity", ("smollm2-135m", "uniform_q4km"), f"ev-{events.batch_id(df['event_id'])}.parquet",
            df.select([c for c in spec.file_columns if c in df.columns]), ("run-a",))
    problems = lake.verify().problems
    assert len(problems) == 1 and problems[0].kind == "schema" and message in problems[0].detail, problems


# ------------------------------------------------------------------ community bundles of version 1

@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> Path:
    from test_community import RUNS, SUBMITTER, fill

    from mqepi.community.submit import build_bundle

    lake = fill(Lake(tmp_path_factory.mktemp("source") / "lake"))
    return build_bundle(lake, list(RUNS), tmp_path_factory.mktemp("bundles") / "good", submitter=SUBMITTER,
                        contact="alice@example.org", meter_calibration="none: simulated meter")


def _with_perplexity(bundle: Path, tmp: Path, change) -> Path:
    """A copy of ``bundle`` whose perplexity file is changed by ``change`` (ids recomputed over
    the columns the file keeps; manifest updated)."""
    from test_community import edit

    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    return edit("perplexity", change)(copy, tmp)


def test_community_accepts_a_version_1_file(good_bundle, tmp_path):
    bundle = _with_perplexity(good_bundle, tmp_path, lambda d: d.drop("chunk_nll", "chunk_tokens").with_columns(
        schema_version=pl.lit(1, pl.Int32)))
    v1 = pl.read_parquet(bundle / "perplexity.parquet")
    assert "chunk_nll" not in v1.columns and v1.height == 2
    checked = validate_bundle(bundle)
    frame = checked.frames["perplexity"]
    assert frame.columns == list(EVENT_TYPES["perplexity"].polars_schema)
    assert frame["schema_version"].to_list() == [1, 1] and frame["chunk_nll"].null_count() == 2

    from mqepi.community.ingest import ingest

    lake = Lake(tmp_path / "lake")
    lake.init()
    ingest(bundle, lake)
    got = lake.read("perplexity")
    assert got["schema_version"].to_list() == [1, 1] and got["chunk_tokens"].null_count() == 2
    assert lake.verify().ok


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.with_columns(schema_version=pl.lit(3, pl.Int32)), "schema_version is newer than the current 2"),
    (lambda d: d.drop("chunk_nll", "chunk_tokens").with_columns(schema_version=pl.lit(0, pl.Int32)),
     "schema_version is below 1"),
    (lambda d: d.drop("chunk_nll", "chunk_tokens"), "lacks column 'chunk_nll', which events of the current schema"),
    (lambda d: d.drop("chunk_tokens").with_columns(schema_version=pl.lit(1, pl.Int32),
                                                   chunk_nll=pl.lit([2.0], pl.List(pl.Float64))),
     "column 'chunk_nll' holds a value in an event of schema version 1"),
    (lambda d: d.drop("chunk_nll", "ppl_stderr").with_columns(schema_version=pl.lit(1, pl.Int32)),
     "missing column 'ppl_stderr'"),  # only the added columns may be missing
    (lambda d: d.with_columns(chunk_nll=pl.lit([2.0], pl.List(pl.Float64)), chunk_tokens=pl.lit(2**30, pl.Int32)),
     "chunk_tokens above the sane bound 16777216"),
])
def test_community_rejects_other_versions_and_mixed_shapes(good_bundle, tmp_path, change, message):
    bundle = _with_perplexity(good_bundle, tmp_path, change)
    with pytest.raises(BundleRejected) as exc:
        validate_bundle(bundle)
    assert message in exc.value.report.text(), exc.value.report.text()


"""Perplexity on a held-out text, and KL divergence against the F16 base (llama-perplexity).

The base's logits are computed once per (base, text, context, chunks) and cached; each
quantization is then scored against them with ``--kl-divergence``. Each measurement is a
named window (``perplexity``, ``kld``) cut from the tool's output lines, stamped on arrival:
from its "calculating perplexity over" / "computing over" line to its last chunk result.

Per chunk (for paired tests between configurations on the same text), each chunk's mean
over its scored tokens is recovered from the running means the tool prints after every
chunk: perplexity runs with ``--ppl-output-type 1`` (a row ``offset  PPL  mean-NLL  stderr``
per chunk, the mean NLL with 6 decimals), and the KLD table prints the running mean KL
divergence with 5 decimals. With ``c`` tokens scored per chunk (``n_ctx - 1 - n_ctx/2``,
the second half of each window but its last token) and ``m_k`` the running mean after chunk
``k``, chunk ``k``'s mean is ``(k*c*m_k - (k-1)*c*m_(k-1)) / c``: exact up to the printed
rounding, so off by at most ``(2k - 1)`` half units of the last printed decimal (see
docs/quality.md). The recovered chunks are checked against the tool's final figures; when
the rows are missing or disagree, the event is still recorded, with null chunk columns and
a warning (:attr:`PerplexityResult.chunk_problem`); only a missing final figure raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mqepi import PRODUCER
from mqepi.meter.stream import RunKey
from mqepi.meter.windows import record_window
from mqepi.quality.scoring import ScoringError, thread_args, tool_failed
from mqepi.rig.executor import LocalExecutor, int_arg

PPL_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
KLD_FIELDS = {
    "ppl_ratio": re.compile(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
    "kld_mean": re.compile(r"Mean\s+KLD:\s*([-0-9.]+)\s*±\s*([0-9.]+)"),
    "kld_median": re.compile(r"Median\s+KLD:\s*([-0-9.]+)"),
    "kld_p99": re.compile(r"99\.0%\s+KLD:\s*([-0-9.]+)"),
    "same_top_p": re.compile(r"Same top p:\s*([0-9.]+)\s*±\s*([0-9.]+)\s*%"),
    "ppl_q": re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
}
CHUNK_LINE = re.compile(r"^\s*\d+\s+[0-9.]+\s+±")  # a KLD table row (one per chunk)
PPL_CHUNK = re.compile(r"\[\d+\][0-9.]+")  # perplexity's running "[1]22.1,[2]..." output (--ppl-output-type 0)
#: A number as C's printf writes one (``%lf``: also ``nan``, ``-nan``, ``inf``).
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+|nan|inf))"
#: Perplexity's row per chunk with ``--ppl-output-type 1``: ``"%8d  %.4lf  %4lf  %4lf\n"`` =
#: batch offset, running PPL, running mean NLL (6 decimals), running stderr of the mean NLL.
PPL_ROW = re.compile(rf"^\s*(\d+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$", re.IGNORECASE)
#: The KLD table's row per chunk: chunk number (from 1), then running values ``x ± u``: PPL
#: (``%9.4lf``), ln(PPL(Q)/PPL(base)) (``%10.5lf``), KL divergence (``%10.5lf``), then Δp RMS
#: and same top p in percent (``%6.3lf``).
KLD_ROW = re.compile(rf"^\s*(\d+)\s+{_NUM}\s*±\s*{_NUM}\s+{_NUM}\s*±\s*{_NUM}\s+{_NUM}\s*±\s*{_NUM}"
                     rf"\s+{_NUM}\s*±\s*{_NUM}\s*%\s+{_NUM}\s*±\s*{_NUM}\s*%\s*$", re.IGNORECASE)
#: The lines that open the windows, with the chunk count and the context the tool uses.
PPL_START = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")
KLD_START = re.compile(r"computing over (\d+) chunks, n_ctx=(\d+)")
#: Lines that open a perplexity or KLD window (the tool has loaded and tokenized).
START_MARKS = ("calculating perplexity over", "computing over")
#: The flag that makes the perplexity run print a row per chunk with its running mean NLL.
PPL_OUTPUT_ARGS = ("--ppl-output-type", "1")
#: Half a unit of the last decimal printed: the running mean NLL (``%lf``: 6 decimals), the
#: running PPL and the final PPL (``%.4lf``), the KLD table's running mean KLD (``%10.5lf``)
#: and the summary's ``Mean KLD`` (``%10.6lf``).
NLL_DECIMALS, KLD_ROW_DECIMALS = 6, 5
NLL_HALF_ULP = 0.5 * 10**-NLL_DECIMALS
PPL_HALF_ULP = 0.5e-4
KLD_ROW_HALF_ULP = 0.5 * 10**-KLD_ROW_DECIMALS
KLD_MEAN_HALF_ULP = 0.5e-6
#: Slack for the float arithmetic of the checks (far below any printed precision).
_FLOAT_SLACK = 1e-9


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    tokens: int
    start_ns: int
    end_ns: int
    #: mean NLL (nats) per scored token of each chunk, text order; None where not recovered
    chunk_nll: list[float] | None = None
    #: tokens scored per chunk (``n_ctx - 1 - n_ctx/2``); None where chunks were not recovered
    chunk_tokens: int | None = None
    #: why the chunks were not recovered (None when they were)
    chunk_problem: str | None = None


def _starts(line: str) -> bool:
    return any(mark in line for mark in START_MARKS)


def scored_per_chunk(n_ctx: int) -> int:
    """Tokens a chunk of ``n_ctx`` tokens scores: positions ``n_ctx/2 .. n_ctx - 2`` each predict
    the next token (``first = n_ctx/2``; ``count += n_ctx - first - 1`` in perplexity.cpp, and
    one ``kld.count`` per such token in its KL divergence)."""
    return n_ctx - n_ctx // 2 - 1


def chunk_means(running: list[float], tokens_per_chunk: int, decimals: int | None = None) -> list[float]:
    """Each chunk's mean from the running means after each chunk: with ``count_k = k * c``
    tokens after chunk ``k``, chunk ``k``'s mean = ``(count_k*m_k - count_(k-1)*m_(k-1)) / c``.

    With the running means printed to ``decimals`` places, each chunk's mean is
    ``k*m_k - (k-1)*m_(k-1)``, a number of as many places: rounding to them drops only the
    float arithmetic's noise (3.3003620000000002 -> 3.300362)."""
    out: list[float] = []
    before = 0.0  # count_(k-1) * m_(k-1): the running sum
    for k, mean in enumerate(running, 1):
        total = k * tokens_per_chunk * mean
        value = (total - before) / tokens_per_chunk
        out.append(value if decimals is None else round(value, decimals) + 0.0)  # + 0.0: no -0.0
        before = total
    return out


def _after_start(lines: list[tuple[int, str]], start: re.Pattern) -> tuple[tuple[int, int] | None, list[tuple[int, str]]]:
    """(chunks, n_ctx) of the tool's last start line and the lines after it (all lines when none)."""
    found, rest = None, lines
    for i, (_, text) in enumerate(lines):
        m = start.search(text)
        if m:
            found, rest = (int(m.group(1)), int(m.group(2))), lines[i + 1:]
    return found, rest


def _ppl_chunks(lines: list[tuple[int, str]], final_ppl: float) -> tuple[list[float] | None, int | None, str | None]:
    """(chunk_nll, tokens per chunk, None), or (None, None, why) when the rows cannot be used."""
    header, rest = _after_start(lines, PPL_START)
    if header is None:
        return None, None, "no 'calculating perplexity over N chunks, n_ctx=C' line"
    n_chunk, n_ctx = header
    rows = [m for _, text in rest if (m := PPL_ROW.match(text))]
    if not rows:
        return None, None, ("no per-chunk rows ('offset  PPL  mean-NLL  stderr', --ppl-output-type 1): "
                            "the output type was overridden or a strided run (--ppl-stride) prints other rows")
    if len(rows) != n_chunk:
        return None, None, f"{len(rows)} per-chunk rows for the {n_chunk} chunks the tool announced"
    running = []
    for k, m in enumerate(rows, 1):
        ppl, av = float(m.group(2)), float(m.group(3))
        if not (math.isfinite(ppl) and math.isfinite(av)):
            return None, None, f"chunk {k}: running PPL {m.group(2)}, mean NLL {m.group(3)} (not finite)"
        tol = PPL_HALF_ULP + math.exp(av) * NLL_HALF_ULP * 1.001 + _FLOAT_SLACK
        if abs(math.exp(av) - ppl) > tol:
            return None, None, f"chunk {k}: running PPL {ppl} is not exp(running mean NLL {av})"
        running.append(av)
    tol = PPL_HALF_ULP + math.exp(running[-1]) * NLL_HALF_ULP * 1.001 + _FLOAT_SLACK
    if abs(math.exp(running[-1]) - final_ppl) > tol:
        return None, None, (f"the last chunk row's exp(mean NLL) {math.exp(running[-1]):.6f} is not the final "
                            f"PPL {final_ppl} (within {tol:.2g})")
    tokens = scored_per_chunk(n_ctx)
    if tokens < 1:
        return None, None, f"n_ctx={n_ctx} scores no token per chunk"
    return chunk_means(running, tokens, NLL_DECIMALS), tokens, None


def parse_perplexity(lines: list[tuple[int, str]], tokens: int = 0) -> PerplexityResult:
    """The final PPL (+/-), the window and the chunks of a perplexity run's output.

    Raises :class:`ScoringError` only without the final estimate (or the start line); chunk
    rows that are missing or disagree with the final figure leave the chunks None and say why
    in ``chunk_problem``. ``tokens`` is passed through to the result."""
    start = end = None
    final = None
    for stamp, text in lines:
        if _starts(text):
            start = stamp
        if PPL_ROW.match(text) or PPL_CHUNK.search(text):
            end = stamp
        m = PPL_FINAL.search(text)
        if m:
            final = (float(m.group(1)), float(m.group(2)))
            end = end or stamp
    if final is None or start is None:
        raise ScoringError("llama-perplexity printed no 'Final estimate: PPL = X +/- Y'")
    chunk_nll, chunk_tokens, problem = _ppl_chunks(lines, final[0])
    return PerplexityResult(final[0], final[1], tokens, start, end, chunk_nll, chunk_tokens, problem)


def _kld_chunks(lines: list[tuple[int, str]], kld_mean: float) -> tuple[list[float] | None, int | None, str | None]:
    """(chunk_kld, tokens per chunk, None), or (None, None, why) when the table cannot be used."""
    header, rest = _after_start(lines, KLD_START)
    if header is None:
        return None, None, "no 'computing over N chunks, n_ctx=C' line"
    n_chunk, n_ctx = header
    rows = [m for _, text in rest if (m := KLD_ROW.match(text))]
    if len(rows) != n_chunk:
        return None, None, f"{len(rows)} rows in the chunk table for the {n_chunk} chunks the tool announced"
    running = []
    for k, m in enumerate(rows, 1):
        if int(m.group(1)) != k:
            return None, None, f"row {k} of the chunk table is numbered {m.group(1)}"
        value = float(m.group(6))  # the KL divergence column
        if not math.isfinite(value):
            return None, None, f"chunk {k}: running mean KLD {m.group(6)} (not finite)"
        running.append(value)
    tol = KLD_ROW_HALF_ULP + KLD_MEAN_HALF_ULP + _FLOAT_SLACK
    if abs(running[-1] - kld_mean) > tol:
        return None, None, f"the last row's mean KLD {running[-1]} is not the final Mean KLD {kld_mean} (within {tol:.2g})"
    tokens = scored_per_chunk(n_ctx)
    if tokens < 1:
        return None, None, f"n_ctx={n_ctx} scores no token per chunk"
    return chunk_means(running, tokens, KLD_ROW_DECIMALS), tokens, None


def parse_kld(lines: list[tuple[int, str]]) -> dict:
    """The summary figures, the window and the chunks of a ``--kl-divergence`` run's output.

    ``chunk_kld`` / ``chunk_tokens`` are None where the chunk table cannot be used, with the
    reason in ``chunk_problem``; a missing summary figure or window raises :class:`ScoringError`."""
    text = "".join(line for _, line in lines)
    out: dict = {}
    for name, pattern in KLD_FIELDS.items():
        m = pattern.search(text)
        if not m:
            raise ScoringError(f"llama-perplexity --kl-divergence printed no {name} line")
        out[name] = float(m.group(1))
        if m.lastindex and m.lastindex > 1:
            out[name + "_stderr"] = float(m.group(2))
    out["same_top_p"] /= 100
    out["same_top_p_stderr"] = out.get("same_top_p_stderr", 0) / 100
    stamps = [s for s, line in lines if CHUNK_LINE.match(line)]
    start = next((s for s, line in lines if _starts(line)), None)
    if start is None or not stamps:
        raise ScoringError("llama-perplexity --kl-divergence printed no chunk results")
    out["start_ns"], out["end_ns"] = start, stamps[-1]
    out["chunk_kld"], out["chunk_tokens"], out["chunk_problem"] = _kld_chunks(lines, out["kld_mean"])
    return out


def _size_args(context: int, chunks: int) -> list[str]:
    """The context and chunk count flags, each checked to be a positive integer."""
    return ["-c", int_arg(context, "context", 1), "--chunks", int_arg(chunks, "chunks", 1)]


def base_logits(perplexity_tool, base_path, text_path, context: int, chunks: int, cache_dir: Path,
                base_sha256: str, text_sha256: str, threads: int | None = None) -> Path:
    """The F16 base's logits for KLD, cached once per (base, text, context, chunks)."""
    target = cache_dir / f"kld-base-{base_sha256[:12]}-{text_sha256[:12]}-c{context}-n{chunks}.kld"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    cmd = [str(perplexity_tool), "-m", str(base_path), "-f", str(text_path), *_size_args(context, chunks),
           "--kl-divergence-base", str(partial), *thread_args(threads)]
    result = LocalExecutor().stream(cmd)  # the base model lives here
    if result.returncode != 0 or not partial.is_file():
        raise tool_failed("llama-perplexity --kl-divergence-base", result)
    partial.replace(target)
    return target


def run_perplexity(perplexity_tool, model_path, text_path, *, context: int, chunks: int, text_sha256: str,
                   base_logits_path: Path | None = None, base_sha256: str | None = None, threads: int | None = None,
                   extra_args: list[str] = (), lake=None, key: RunKey | None = None,
                   progress: Callable[[str], None] = lambda line: None, executor=None) -> tuple[PerplexityResult, dict | None]:
    """Perplexity on a held-out text, and KLD against the base's cached logits when given.

    The perplexity run prints a row per chunk (``--ppl-output-type 1``, before ``extra_args``,
    which may override it); chunks that cannot be recovered are recorded as null, with a
    ``warning:`` line to ``progress``. With an ``executor`` (a head node) the paths are that
    host's: see :mod:`mqepi.rig.executor`."""
    executor = executor or LocalExecutor()
    sizes = [*_size_args(context, chunks), *thread_args(threads)]
    common = [*sizes, *extra_args]
    result = executor.stream([str(perplexity_tool), "-m", str(model_path), "-f", str(text_path), *sizes,
                              *PPL_OUTPUT_ARGS, *extra_args], progress)
    if result.returncode != 0:
        raise tool_failed("llama-perplexity", result)
    out = parse_perplexity(result.lines, tokens=context * chunks)
    if out.chunk_problem:
        progress(f"warning: perplexity chunks not recovered, chunk_nll recorded as null: {out.chunk_problem}")
    kld = None
    if base_logits_path is not None:
        k = executor.stream([str(perplexity_tool), "-m", str(model_path), "--kl-divergence-base", str(base_logits_path),
                             "--kl-divergence", *common], progress)
        if k.returncode != 0:
            raise tool_failed("llama-perplexity --kl-divergence", k)
        kld = parse_kld(k.lines)
        if kld["chunk_problem"]:
            progress(f"warning: KLD chunks not recovered, chunk_kld recorded as null: {kld['chunk_problem']}")
    if lake is not None and key is not None:
        _record(lake, key, out, kld, context=context, chunks=chunks, text_sha256=text_sha256, base_sha256=base_sha256)
    return out, kld


def _record(lake, key: RunKey, ppl: PerplexityResult, kld: dict | None, *, context: int, chunks: int, text_sha256: str,
            base_sha256: str | None) -> None:
    """The ``perplexity`` event and window, then the ``kld`` event and window when measured.

    The chunk values are stored as recovered: a chunk's KLD is not clamped at 0 (the base's
    log-probabilities are stored rounded, so a chunk of a near-identical model can read a hair
    below 0), while ``kld_mean``, ``kld_median`` and ``kld_p99`` are."""
    tokens = ppl.tokens
    lake.record("perplexity", {**key.columns(1), "text_sha256": [text_sha256], "context": [context], "chunks": [chunks],
                               "tokens": [tokens], "ppl": [ppl.ppl], "ppl_stderr": [ppl.ppl_stderr],
                               "chunk_nll": [ppl.chunk_nll], "chunk_tokens": [ppl.chunk_tokens]}, producer=PRODUCER)
    record_window(lake, key, "perplexity", ppl.start_ns, ppl.end_ns, tokens=tokens)
    if kld is None:
        return
    lake.record("kld", {
        **key.columns(1), "base_sha256": [base_sha256], "text_sha256": [text_sha256], "context": [context],
        "chunks": [chunks], "kld_mean": [max(kld["kld_mean"], 0.0)], "kld_mean_stderr": [kld["kld_mean_stderr"]],
        "kld_median": [max(kld["kld_median"], 0.0)], "kld_p99": [max(kld["kld_p99"], 0.0)],
        "ppl_ratio": [kld["ppl_ratio"]], "ppl_ratio_stderr": [kld["ppl_ratio_stderr"]],
        "same_top_p": [kld["same_top_p"]], "chunk_kld": [kld["chunk_kld"]], "chunk_tokens": [kld["chunk_tokens"]],
    }, producer=PRODUCER)
    record_window(lake, key, "kld", kld["start_ns"], kld["end_ns"], tokens=tokens)

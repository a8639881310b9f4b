"""Perplexity on a held-out text, and KL divergence against the F16 base (llama-perplexity).

The base's logits are computed once per (base, text, context, chunks) and cached; each
quantization is then scored against them with ``--kl-divergence``. Each measurement is a
named window (``perplexity``, ``kld``) cut from the tool's output lines, stamped on arrival:
from its "calculating perplexity over" / "computing over" line to its last chunk result.
"""

from __future__ import annotations

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
PPL_CHUNK = re.compile(r"\[\d+\][0-9.]+")  # perplexity's running "[1]22.1,[2]..." output
#: Lines that open a perplexity or KLD window (the tool has loaded and tokenized).
START_MARKS = ("calculating perplexity over", "computing over")


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    tokens: int
    start_ns: int
    end_ns: int


def _starts(line: str) -> bool:
    return any(mark in line for mark in START_MARKS)


def parse_perplexity(lines: list[tuple[int, str]]) -> tuple[float, float, int, int]:
    start = end = None
    final = None
    for stamp, text in lines:
        if _starts(text):
            start = stamp
        if PPL_CHUNK.search(text):
            end = stamp
        m = PPL_FINAL.search(text)
        if m:
            final = (float(m.group(1)), float(m.group(2)))
            end = end or stamp
    if final is None or start is None:
        raise ScoringError("llama-perplexity printed no 'Final estimate: PPL = X +/- Y'")
    return final[0], final[1], start, end


def parse_kld(lines: list[tuple[int, str]]) -> dict:
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

    With an ``executor`` (a head node) the paths are that host's: see :mod:`mqepi.rig.executor`."""
    executor = executor or LocalExecutor()
    common = [*_size_args(context, chunks), *thread_args(threads), *extra_args]
    result = executor.stream([str(perplexity_tool), "-m", str(model_path), "-f", str(text_path), *common], progress)
    if result.returncode != 0:
        raise tool_failed("llama-perplexity", result)
    ppl, err, start, end = parse_perplexity(result.lines)
    out = PerplexityResult(ppl, err, context * chunks, start, end)
    kld = None
    if base_logits_path is not None:
        k = executor.stream([str(perplexity_tool), "-m", str(model_path), "--kl-divergence-base", str(base_logits_path),
                             "--kl-divergence", *common], progress)
        if k.returncode != 0:
            raise tool_failed("llama-perplexity --kl-divergence", k)
        kld = parse_kld(k.lines)
    if lake is not None and key is not None:
        _record(lake, key, out, kld, context=context, chunks=chunks, text_sha256=text_sha256, base_sha256=base_sha256)
    return out, kld


def _record(lake, key: RunKey, ppl: PerplexityResult, kld: dict | None, *, context: int, chunks: int, text_sha256: str,
            base_sha256: str | None) -> None:
    """The ``perplexity`` event and window, then the ``kld`` event and window when measured."""
    tokens = ppl.tokens
    lake.record("perplexity", {**key.columns(1), "text_sha256": [text_sha256], "context": [context], "chunks": [chunks],
                               "tokens": [tokens], "ppl": [ppl.ppl], "ppl_stderr": [ppl.ppl_stderr]}, producer=PRODUCER)
    record_window(lake, key, "perplexity", ppl.start_ns, ppl.end_ns, tokens=tokens)
    if kld is None:
        return
    lake.record("kld", {
        **key.columns(1), "base_sha256": [base_sha256], "text_sha256": [text_sha256], "context": [context],
        "chunks": [chunks], "kld_mean": [max(kld["kld_mean"], 0.0)], "kld_mean_stderr": [kld["kld_mean_stderr"]],
        "kld_median": [max(kld["kld_median"], 0.0)], "kld_p99": [max(kld["kld_p99"], 0.0)],
        "ppl_ratio": [kld["ppl_ratio"]], "ppl_ratio_stderr": [kld["ppl_ratio_stderr"]],
        "same_top_p": [kld["same_top_p"]],
    }, producer=PRODUCER)
    record_window(lake, key, "kld", kld["start_ns"], kld["end_ns"], tokens=tokens)

"""The scoring engine: every choice's log-likelihood on llama.cpp's library, prefixes decoded once.

llama-perplexity's multiple-choice mode prints only a running accuracy; this engine calls the
llama.cpp C API (the shared libraries built from the same vendored commit as the tools,
:func:`mqepi.quant.toolchain.ensure_library`) through llama-cpp-python's low-level ctypes
bindings, and scores a question as lm-evaluation-harness does for ``multiple_choice`` tasks:

* each choice is the continuation ``" " + answer`` of the prompt (lm-eval's target delimiter);
  the token split follows lm-eval's ``_encode_pair``: the whole text ``prompt + " " + answer``
  is tokenized (with the model's own BOS setting, as llama-perplexity does) and the
  continuation is what follows the prompt's own token count;
* a choice's score is the **sum** of its continuation tokens' log-probabilities (nats);
  ``acc`` picks the highest sum, ``acc_norm`` the highest sum per character of the answer text
  (``len(answer)``, as lm-eval's ``process_results`` divides); ties go to the first choice;
* a prompt longer than the context is cut from the left (lm-eval's ``[-(max_length + 1):]``),
  and the number of tokens cut is recorded.

Work saved against decoding every choice from an empty cache:

* the sequence kept in the KV cache (sequence 0) is the previous question's prompt; a new
  question removes only what differs (``llama_memory_seq_rm``) and decodes only its own
  tokens on top, so a subject's description and shots are decoded once for all its questions;
* the last token of a continuation needs no decoding (nothing is scored after it): answers of
  one token (" A".." D") are scored from the prompt's last logits, with no branch at all;
* flash attention is off (its CPU kernel accumulates in F16, which made a reused prefix's
  scores differ from a fresh decode by up to 0.08 nats); with it off they agree within 1e-3;
* longer continuations are decoded together in one batch, each on its own sequence branched
  from the prompt (``llama_memory_seq_cp``; the cache is unified so a branch shares the
  prompt's cells), then dropped.

The engine runs as its own process (``python -m mqepi.quality.engine``) so that it runs on a
cluster's head node like the tools, through the same executor (:mod:`mqepi.rig.executor`),
with RPC workers registered as llama.cpp's ``--rpc`` does (``ggml_backend_rpc_add_server``,
then ``ggml_backend_register``) and every layer offloaded to them. It prints one JSON line
per question; the parent stamps each line on arrival. The window starts at the ``start``
line (model loaded, every question tokenized) and ends at the last question's line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mqepi.errors import MqepiError
from mqepi.quant.toolchain import LIBRARIES

#: Largest task file the engine reads (bytes): full MMLU with 5 shots is about 60 MB.
MAX_TASK_FILE = 512 * 1024 * 1024
START = "mqepi-engine start"
DONE = "mqepi-engine done"
READY = "mqepi-engine ready"


class EngineError(MqepiError):
    """The scoring engine could not load, decode or read its input."""


# ------------------------------------------------------------------ loading the library


_C = None  # the llama_cpp.llama_cpp module once loaded
_GGML = None  # libggml (backend registry)


def load(lib_dir: str | Path):
    """Load libllama and its ggml libraries from ``lib_dir`` and the ctypes bindings over them.

    The ggml libraries are opened first with RTLD_GLOBAL so that libllama's dependencies
    resolve to the files of this folder whatever the loader's search path."""
    global _C, _GGML
    if _C is not None:
        return _C
    lib_dir = Path(lib_dir)
    handles = {}
    for name in LIBRARIES:
        path = lib_dir / f"lib{name}.so"
        if not path.is_file():
            raise EngineError(f"{path} is missing: build the shared libraries with `mqepi toolchain build`")
        handles[name] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    try:
        import llama_cpp.llama_cpp as bindings  # loads libllama at import: only after LLAMA_CPP_LIB_PATH is set
    except ImportError as exc:
        raise EngineError(f"the llama-cpp-python bindings are not installed ({exc}): run `mqepi toolchain build`") from None
    _GGML = handles["ggml"]
    _GGML.ggml_backend_register.argtypes = [ctypes.c_void_p]
    _GGML.ggml_backend_register.restype = None
    rpc = handles["ggml-rpc"]
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    _GGML._rpc = rpc
    bindings.llama_log_set(_quiet_log, None)
    bindings.llama_backend_init()
    _C = bindings
    return bindings


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level, text, user_data):  # pragma: no cover - called from C
    if level >= 4 and text:  # GGML_LOG_LEVEL_ERROR
        sys.stderr.write(text.decode("utf-8", "replace"))


@ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_float, ctypes.c_void_p)
def _no_progress(fraction, user_data):  # pragma: no cover - called from C
    return True


def add_rpc_servers(endpoints: Sequence[str]) -> None:
    """Register RPC workers as devices, as the tools' ``--rpc host:port,...`` does."""
    for endpoint in endpoints:
        reg = _GGML._rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise EngineError(f"cannot reach the RPC worker {endpoint}")
        _GGML.ggml_backend_register(reg)


# ------------------------------------------------------------------ scoring


@dataclass
class QuestionScore:
    """One question as the engine scored it."""

    index: int
    scores: list[float]  # summed log-likelihood of each continuation, nats
    choice_tokens: list[int]  # tokens of each continuation
    prompt_tokens: int  # tokens of the prompt as scored (after truncation)
    truncated_tokens: int  # tokens cut from the left of the longest choice
    tokens_evaluated: int  # tokens this question decoded (prompt tokens not in the cache, branches)
    tokens_naive: int  # tokens a per-choice evaluation from an empty cache decodes

    def line(self) -> str:
        return json.dumps({"i": self.index, "scores": self.scores, "choice_tokens": self.choice_tokens,
                           "prompt_tokens": self.prompt_tokens, "truncated": self.truncated_tokens,
                           "evaluated": self.tokens_evaluated, "naive": self.tokens_naive})


@dataclass
class _Prepared:
    inputs: list[list[int]]  # per choice: the tokens decoded (whole text minus its last token, truncated)
    targets: list[list[int]]  # per choice: the continuation tokens scored
    first: list[int]  # per choice: index in inputs whose logits score targets[0]
    prompt_tokens: int
    truncated: int
    naive: int


class Scorer:
    """One model loaded in this process, ready to score questions."""

    def __init__(self, model_path: str | Path, lib_dir: str | Path, *, context: int = 2048, threads: int | None = None,
                 rpc: Sequence[str] = (), max_choices: int = 8, cells: int | None = None):
        C = load(lib_dir)
        self.C = C
        if rpc:
            add_rpc_servers(rpc)
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = 999 if rpc else 0
        mparams.progress_callback = _no_progress
        self.model = C.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load the model {model_path}")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.vocab))
        self.context = int(context)
        self.max_seqs = max_choices + 1
        self.cells = int(cells or 2 * self.context)
        self.threads = threads or os.cpu_count() or 1
        self.ctx = None
        self._new_context()

    def _new_context(self) -> None:
        C = self.C
        if self.ctx:
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
        cparams = C.llama_context_default_params()
        cparams.n_ctx = self.cells
        cparams.n_batch = self.cells
        cparams.n_ubatch = min(512, self.cells)
        cparams.n_seq_max = self.max_seqs
        cparams.kv_unified = True
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        # flash attention off: the CPU kernel accumulates V in F16, so a question's scores would
        # depend on how its cache was filled (measured: up to 0.08 nats on Q8_0 between a prefix
        # reused from the cache and the same prompt decoded at once); without it they agree to 1e-3
        cparams.flash_attn_type = 0
        self.ctx = C.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create a context of {self.cells} cells")
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(self.cells, 0, self.max_seqs)
        self.cached: list[int] = []  # tokens held by sequence 0, from position 0

    def close(self) -> None:
        C = self.C
        if self.ctx:
            C.llama_batch_free(self.batch)
            C.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            C.llama_model_free(self.model)
            self.model = None

    # -------------------------------------------------------------- tokens

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` in the model's vocabulary (BOS as the model asks for it)."""
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (self.C.llama_token * n_max)()
        n = self.C.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, False)
        if n < 0:
            buf = (self.C.llama_token * -n)()
            n = self.C.llama_tokenize(self.vocab, raw, len(raw), buf, -n, add_special, False)
        if n < 0:
            raise EngineError(f"llama.cpp could not tokenize a text of {len(raw)} bytes")
        return list(buf[:n])

    def prepare(self, prompt: str, answers: Sequence[str]) -> _Prepared:
        """lm-eval's token split and left truncation for one question."""
        context = self.tokenize(prompt)
        inputs, targets, first = [], [], []
        truncated = 0
        naive = 0
        for answer in answers:
            whole = self.tokenize(prompt + " " + answer)
            split = len(context)
            if split >= len(whole):  # the answer merged into the prompt's last token: score the last token
                split = len(whole) - 1
            target = whole[split:]
            inp = whole[:-1]
            cut = max(0, len(inp) - self.context)
            if cut:
                inp = inp[cut:]
            truncated = max(truncated, cut)
            inputs.append(inp)
            targets.append(target)
            first.append(len(inp) - len(target))
            naive += len(whole)
        return _Prepared(inputs, targets, first, min(f + 1 for f in first), truncated, naive)

    def fit(self, prepared: Sequence[_Prepared]) -> None:
        """Grow the cache (a new context, before any scoring) so that the largest question fits:
        its prompt plus every branch, and the longest naive input."""
        need = 0
        for p in prepared:
            common = 0
            for column in zip(*p.inputs):
                if len(set(column)) != 1:
                    break
                common += 1
            need = max(need, common + sum(len(i) - common for i in p.inputs), max(len(i) for i in p.inputs))
        if need > self.cells:
            self.cells = -(-need // 256) * 256
            self._new_context()

    # -------------------------------------------------------------- decoding

    def _decode(self, pieces: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants logits) in one batch."""
        if len(pieces) > self.cells:
            raise EngineError(f"a batch of {len(pieces)} tokens exceeds the context of {self.cells} cells")
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(pieces):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(pieces)
        rc = self.C.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc} for a batch of {len(pieces)} tokens")

    def _log_probs(self, batch_index: int, tokens: Sequence[int]) -> list[float]:
        """log softmax at one output row, for ``tokens`` (float64 log-sum-exp)."""
        ptr = self.C.llama_get_logits_ith(self.ctx, batch_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        lse = top + math.log(float(np.exp(logits - top).sum()))
        return [float(logits[t] - lse) for t in tokens]

    def score(self, index: int, prompt: str, answers: Sequence[str], prepared: _Prepared | None = None) -> QuestionScore:
        """Score one question on top of what the cache holds."""
        p = prepared or self.prepare(prompt, answers)
        if len(answers) + 1 > self.max_seqs:
            raise EngineError(f"question {index} has {len(answers)} choices; the engine was set up for {self.max_seqs - 1}")
        # the part every choice shares, decoded on sequence 0 on top of the cached tokens
        common = 0
        for column in zip(*p.inputs):
            if len(set(column)) != 1:
                break
            common += 1
        need_from = min(min(p.first), common - 1)  # first position whose logits are read from sequence 0
        keep = 0
        for a, b in zip(self.cached, p.inputs[0][:common]):
            if a != b:
                break
            keep += 1
        keep = min(keep, need_from)
        evaluated = 0
        scores = [0.0] * len(answers)
        if keep < len(self.cached):
            self.C.llama_memory_seq_rm(self.mem, 0, keep, -1)
        shared = p.inputs[0][keep:common]
        rows = {}  # position -> batch row with logits, for sequence 0's batch
        if shared:
            pieces = [(tok, keep + i, 0, keep + i >= need_from) for i, tok in enumerate(shared)]
            self._decode(pieces)
            evaluated += len(pieces)
            rows = {keep + i: i for i, piece in enumerate(pieces) if piece[3]}
        self.cached = list(p.inputs[0][:common])
        # scores whose logits come from sequence 0
        for k in range(len(answers)):
            for j, tok in enumerate(p.targets[k]):
                pos = p.first[k] + j
                if pos < common:
                    scores[k] += self._log_probs(rows[pos], [tok])[0]
        # the rest of each choice, one branch per choice, all in one batch
        branches = [k for k in range(len(answers)) if len(p.inputs[k]) > common]
        if branches:
            pieces, where = [], {}
            for k in branches:
                self.C.llama_memory_seq_cp(self.mem, 0, k + 1, -1, -1)
                for pos in range(common, len(p.inputs[k])):
                    wanted = pos >= p.first[k]
                    if wanted:
                        where[(k, pos)] = len(pieces)
                    pieces.append((p.inputs[k][pos], pos, k + 1, wanted))
            self._decode(pieces)
            evaluated += len(pieces)
            for k in branches:
                for j, tok in enumerate(p.targets[k]):
                    pos = p.first[k] + j
                    if pos >= common:
                        scores[k] += self._log_probs(where[(k, pos)], [tok])[0]
                self.C.llama_memory_seq_rm(self.mem, k + 1, -1, -1)
        return QuestionScore(index, scores, [len(t) for t in p.targets], p.prompt_tokens, p.truncated,
                             max(evaluated, 1), p.naive)

    def score_naive(self, index: int, prompt: str, answers: Sequence[str]) -> QuestionScore:
        """The reference evaluation: every choice's whole text decoded from an empty cache,
        logits at every position (what the cross-checks compare :meth:`score` against)."""
        p = self.prepare(prompt, answers)
        scores = []
        evaluated = 0
        for k in range(len(answers)):
            self.C.llama_memory_clear(self.mem, True)
            inp = p.inputs[k]
            self._decode([(tok, pos, 0, pos >= p.first[k]) for pos, tok in enumerate(inp)])
            evaluated += len(inp)
            scores.append(sum(self._log_probs(p.first[k] + j, [tok])[0] for j, tok in enumerate(p.targets[k])))
        self.C.llama_memory_clear(self.mem, True)
        self.cached = []
        return QuestionScore(index, scores, [len(t) for t in p.targets], p.prompt_tokens, p.truncated, evaluated, p.naive)

    def score_all(self, questions: Sequence[dict], on_start: Callable[[], None] = lambda: None) -> Iterator[QuestionScore]:
        """Tokenize every question first (outside the window), then score them in order."""
        prepared = [self.prepare(q["prompt"], q["answers"]) for q in questions]
        self.fit(prepared)
        on_start()
        for i, (q, p) in enumerate(zip(questions, prepared)):
            yield self.score(i, q["prompt"], q["answers"], p)


# ------------------------------------------------------------------ choosing answers


def choose(scores: Sequence[float], answers: Sequence[str]) -> tuple[int, int]:
    """(acc, acc_norm) predictions as lm-eval's ``process_results`` computes them: the argmax of
    the summed log-likelihoods, and of the log-likelihood per character of the answer text
    (``len(answer)``); the first of equal scores wins (numpy's argmax)."""
    acc = max(range(len(scores)), key=lambda k: (scores[k], -k))
    norm = [scores[k] / max(len(answers[k]), 1) for k in range(len(scores))]
    acc_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
    return acc, acc_norm


# ------------------------------------------------------------------ the engine process


def read_tasks(path: str | Path) -> dict:
    """The engine's input: ``{"questions": [{"prompt": str, "answers": [str, ...]}, ...]}``."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_TASK_FILE:
        raise EngineError(f"{path}: {size} bytes, more than the engine reads ({MAX_TASK_FILE})")
    try:
        data = json.loads(path.read_bytes())
        questions = data["questions"]
        for q in questions:
            if not isinstance(q["prompt"], str) or not all(isinstance(a, str) for a in q["answers"]) or not q["answers"]:
                raise TypeError("prompt must be a string and answers a non-empty list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{path}: not an engine task file ({exc})") from None
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mqepi.quality.engine --lib DIR --model GGUF --tasks JSON [--context N]
    [--threads N] [--rpc host:port,...] [--naive]``: score every question, one JSON line each."""
    ap = argparse.ArgumentParser(prog="python -m mqepi.quality.engine", description=main.__doc__)
    ap.add_argument("--lib", required=True, help="folder with libllama.so and the ggml libraries")
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--tasks", required=True, help="task file written by mqepi (JSON)")
    ap.add_argument("--context", type=int, default=2048, help="tokens a prompt may hold (default 2048)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--rpc", default="", help="RPC workers host:port,... (every layer offloaded to them)")
    ap.add_argument("--naive", action="store_true", help="decode every choice from an empty cache (reference)")
    args = ap.parse_args(argv)
    try:
        tasks = read_tasks(args.tasks)
        questions = tasks["questions"]
        max_choices = max((len(q["answers"]) for q in questions), default=1)
        scorer = Scorer(args.model, args.lib, context=args.context, threads=args.threads,
                        rpc=[e for e in args.rpc.split(",") if e], max_choices=max_choices)
        print(f"{READY} n_vocab={scorer.n_vocab} add_bos={int(scorer.add_bos)}", flush=True)
        if args.naive:
            scorer.fit([scorer.prepare(q["prompt"], q["answers"]) for q in questions])
            print(START, flush=True)
            results = (scorer.score_naive(i, q["prompt"], q["answers"]) for i, q in enumerate(questions))
        else:
            results = scorer.score_all(questions, on_start=lambda: print(START, flush=True))
        for result in results:
            print(result.line(), flush=True)
        print(f"{DONE} {time.time_ns()}", flush=True)
        scorer.close()
    except EngineError as exc:
        print(f"mqepi-engine error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

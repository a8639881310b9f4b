"""Progress lines that carry a count: what long library calls pass to their ``progress`` callbacks.

The library reports through ``progress: Callable[[str], None]`` and never draws anything. Most
lines are plain text. A line that says how far a count has got (the runs of a sweep, the
questions a benchmark window has scored) is a :class:`Count`: a ``str`` with exactly the text a
plain line would have (a callback that prints or logs it sees nothing new) and the numbers
beside it, for a front end that draws a bar from them or keeps a log short
(:func:`mqepi.cli._common.progress_lines`).
"""

from __future__ import annotations

from collections.abc import Callable


class Count(str):
    """A progress line that also says ``done`` of ``total`` ``kind`` (``"runs"``, ``"questions"``)
    and, where its producer estimates it, ``left_s``: the seconds left."""

    kind: str
    done: int
    total: int
    left_s: float | None

    def __new__(cls, text: str, *, kind: str, done: int, total: int, left_s: float | None = None) -> Count:
        line = super().__new__(cls, text)
        line.kind, line.done, line.total, line.left_s = kind, done, total, left_s
        return line


def about_left(seconds: float) -> str:
    """``"about 12 min left"`` (from 90 s on) or ``"about 40 s left"``."""
    return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"


def indented(progress: Callable[[str], None], prefix: str = "  ") -> Callable[[str], None]:
    """``progress`` with every line after ``prefix`` (a :class:`Count` stays one, its numbers kept)."""

    def forward(line: str) -> None:
        if isinstance(line, Count):
            progress(Count(prefix + line, kind=line.kind, done=line.done, total=line.total, left_s=line.left_s))
        else:
            progress(prefix + line)

    return forward

"""The paper's research questions and the shape of an answer to one of them.

Every answer is about one (origin, model, power source) group (:class:`GroupResult`) and
names its evidence and its power source (:class:`Answer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mqepi.results.report.labels import NO_POWER, power_label

RQ_QUESTIONS = {
    "RQ1": "Do mixed-quant configurations with identical perplexity produce different EPI?",
    "RQ2": "What does the Pareto frontier of accuracy vs. J/token look like?",
    "RQ3": "Which layers are most sensitive to quantization depth in terms of energy impact?",
    "RQ4": "Is the EPI-optimal mixed-quant configuration smaller or larger than uniform Q4_K_M?",
    "RQ5": "Does the energy benefit come from reduced memory bandwidth, reduced compute, or both?",
}


@dataclass
class Answer:
    """One research question answered for one (origin, model, power source) group."""

    rq: str
    origin: str
    model: str
    power_source: str
    answer: str
    evidence: str
    supported: bool

    @property
    def question(self) -> str:
        return RQ_QUESTIONS[self.rq]

    @property
    def power(self) -> str:
        return power_label(self.power_source)

    def text(self) -> str:
        return f"{self.rq}: {self.answer} Evidence: {self.evidence} Power: {self.power}."


@dataclass
class GroupResult:
    """What every research question's result holds: its group (the answer comes last in each)."""

    origin: str
    model: str
    power_source: str

    @property
    def key(self) -> tuple[str, str, str]:
        """(origin, model, power source)."""
        return self.origin, self.model, self.power_source


def no_energy(power_source: str) -> str | None:
    """Why no energy question can be answered for a group of ``power_source``, or None."""
    if power_source in NO_POWER:
        return "no power was measured for these runs (power source none), so no energy question can be answered"
    return None

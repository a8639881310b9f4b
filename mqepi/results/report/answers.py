"""Every research question for every group (:func:`analyse`) and the printed :func:`summary`."""

from __future__ import annotations

from dataclasses import dataclass

from mqepi.results.report.comparisons import Rq1Result, Rq2Result, Rq4Result, rq1_matched_pairs, rq2_frontier, rq4_optimum
from mqepi.results.report.data import ReportData
from mqepi.results.report.labels import group_title, power_banner
from mqepi.results.report.questions import Answer
from mqepi.results.report.regressions import Rq3Result, Rq5Result, rq3_sensitivity, rq5_attribution


@dataclass
class Analyses:
    """RQ1-RQ5, one result per group each."""

    rq1: list[Rq1Result]
    rq2: list[Rq2Result]
    rq3: list[Rq3Result]
    rq4: list[Rq4Result]
    rq5: list[Rq5Result]

    def answers(self, origin: str, model: str, power_source: str) -> list[Answer]:
        """The group's answers, RQ1 first."""
        out = []
        for results in (self.rq1, self.rq2, self.rq3, self.rq4, self.rq5):
            out.extend(r.answer for r in results if r.key == (origin, model, power_source))
        return out


def analyse(data: ReportData) -> Analyses:
    """Every research question for every group."""
    return Analyses(rq1_matched_pairs(data), rq2_frontier(data), rq3_sensitivity(data), rq4_optimum(data),
                    rq5_attribution(data))


def nothing_to_answer(data: ReportData) -> str:
    """What the summary and the report say when no group has a configuration summary."""
    return f"No finished runs with a configuration summary for origin {data.origin}: nothing to answer."


def summary(data: ReportData, analyses: Analyses | None = None) -> str:
    """RQ1-RQ5 in a few lines each, per (origin, model, power source) group; with several
    hardware profiles, per hardware (each answered from its own runs only)."""
    hardware = data.hardware()
    if len(hardware) > 1:
        _sev, banner = power_banner(data.power_sources())
        parts = [summary(data.for_hardware(hw)).split("\n", 1)[1] for hw, _ in hardware]
        return banner + "\n" + "\n".join(parts)
    analyses = analyses or analyse(data)
    _sev, banner = power_banner(data.power_sources())
    lines = [banner] + [f"Hardware: {description}" for _, description in hardware]
    groups = data.groups()
    if not groups:
        lines.append(nothing_to_answer(data))
        return "\n".join(lines) + "\n"
    for origin, model, ps in groups:
        lines += ["", f"== {group_title(origin, model, ps)} =="]
        for a in analyses.answers(origin, model, ps):
            lines.append(f"{a.rq} ({a.question})")
            lines.append(f"  {a.answer}")
            lines.append(f"  Evidence: {a.evidence} Power: {a.power}.")
    return "\n".join(lines) + "\n"

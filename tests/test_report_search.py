"""The per-layer search in the report: predicted vs measured, where each searched map lands on
the KLD-vs-J/token frontier, and whether one is below every paper configuration of equal or
lower KLD in point values or within intervals (frames built by hand; the comparison counted
by brute force here)."""

from __future__ import annotations

import json

import polars as pl

from mqepi.results.report.data import ReportData
from mqepi.results.report.searched import compare, provenance, search_summary
from mqepi.results.report.write import write_report

GROUP = {"model": "smollm2-135m", "origin": "lab", "power_source": "simulated", "hardware_id": "hw-x", "simulated": True}
#: (config_id, kind, KLD, J/token, half-width of the J/token interval)
POINTS = [
    ("uniform_q8", "uniform", 0.004, 0.080, 0.002),
    ("uniform_q6k", "uniform", 0.030, 0.070, 0.002),
    ("uniform_q4km", "uniform", 0.120, 0.060, 0.002),
    ("uniform_q2k", "uniform", 0.540, 0.050, 0.002),
    ("search-aaaa", "searched", 0.110, 0.052, 0.002),   # below every paper config of KLD <= 0.110, intervals apart
    ("search-bbbb", "searched", 0.100, 0.069, 0.0015),  # below both (0.070, 0.080) in points; intervals overlap q6k
    ("search-kldonly-cccc", "searched", 0.020, 0.090, 0.002),  # above uniform_q8
    ("search-random-dddd", "searched", 0.400, 0.058, 0.002),
]
ROLES = {"search-aaaa": "searched", "search-bbbb": "searched", "search-kldonly-cccc": "kld-only",
         "search-random-dddd": "random"}


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(config_summary, kld_frontier) of POINTS, the frontier by brute force."""
    cs = pl.DataFrame([{**GROUP, "config_id": c, "kind": k, "kld_mean": kl, "j_per_token": j,
                        "j_per_token_ci_low": j - h, "j_per_token_ci_high": j + h, "n_repeats": 2, "n_excluded": 0}
                       for c, k, kl, j, h in POINTS])
    pts = [(c, kl, j) for c, _, kl, j, _ in POINTS]
    on = {c: not any(k2 <= kl and j2 <= j and (k2 < kl or j2 < j) for _, k2, j2 in pts) for c, kl, j in pts}
    kf = cs.select(*GROUP, "config_id", "kind", "kld_mean", "j_per_token").with_columns(
        on_frontier=pl.col("config_id").replace_strict(on), rank=pl.col("j_per_token").rank("ordinal").cast(pl.Int64))
    return cs, kf


def provenances() -> dict[str, dict]:
    return {c: {"role": r, "predicted_kld": kl * 0.9, "predicted_j_per_token": j * 1.01}
            for (c, _, kl, j, _), r in ((p, ROLES.get(p[0])) for p in POINTS) if r}


def test_each_searched_map_is_compared_with_the_paper_configs_of_equal_or_lower_kld():
    cs, kf = frames()
    points = kf.join(cs.select(*GROUP, "config_id", "j_per_token_ci_low", "j_per_token_ci_high").drop("simulated"),
                     on=["model", "origin", "power_source", "hardware_id", "config_id"])
    got = {m["config_id"]: m for m in compare(points, provenances())}
    assert sorted(got) == sorted(ROLES)  # every search-* map, no paper config, no other
    for c, _, kl, j, h in POINTS:
        if c not in ROLES:
            continue
        paper = [(j2, h2) for c2, _, k2, j2, h2 in POINTS if not c2.startswith("search-") and k2 <= kl]
        m = got[c]
        assert m["role"] == ROLES[c] and m["paper_configs_at_or_below_its_kld"] == len(paper)
        assert m["lower_j_than_all_of_them"] == (bool(paper) and all(j < j2 for j2, _ in paper))
        assert m["lower_j_within_intervals"] == (bool(paper) and all(j + h < j2 - h2 for j2, h2 in paper))
    assert got["search-aaaa"]["lower_j_within_intervals"] and got["search-aaaa"]["on_kld_frontier"]
    assert got["search-bbbb"]["lower_j_than_all_of_them"] and not got["search-bbbb"]["lower_j_within_intervals"]
    assert not got["search-kldonly-cccc"]["lower_j_than_all_of_them"]
    text = search_summary(list(got.values()))
    assert "non-overlapping 95% J/token intervals: search-aaaa." in text and "median relative error 10%" in text


def test_a_claim_within_intervals_is_only_made_when_the_intervals_support_it():
    cs, kf = frames()
    cs = cs.with_columns(j_per_token_ci_high=pl.col("j_per_token") + 0.02)  # every interval wide
    points = kf.join(cs.select("config_id", "j_per_token_ci_low", "j_per_token_ci_high"), on="config_id")
    text = search_summary(compare(points, provenances()))
    assert "intervals overlap: the data do not show that it dominates" in text and "non-overlapping" not in text


def test_the_report_has_a_search_section_with_predictions_and_the_kld_figure(tmp_path):
    cs, kf = frames()
    qc = pl.DataFrame([{"model": GROUP["model"], "config_id": c, "origin": "lab", "kind": k, "map_sha256": "0" * 64,
                        "provenance_json": json.dumps(provenances()[c]) if c in ROLES else None}
                       for c, k, *_ in POINTS])
    files = write_report(ReportData.from_frames(config_summary=cs, kld_frontier=kf, quant_config=qc), tmp_path)
    md = files.markdown.read_text()
    assert "### Per-layer search" in md
    section = md.split("### Per-layer search")[1].split("\n### ")[0]
    for c in ROLES:
        assert c in section
    row = next(line for line in section.splitlines() if line.startswith("| search-aaaa"))
    assert "0.099" in row and "0.0520 (0.0500-0.0540)" in row and "yes, within intervals" in row  # predicted 0.9 x 0.110
    assert (tmp_path / "figures").glob("kld-*.png") and any(p.name.startswith("kld-") for p in files.figures)
    # without a searched map there is no section
    paper = [c for c, *_ in POINTS if c not in ROLES]
    plain = write_report(ReportData.from_frames(config_summary=cs.filter(pl.col("config_id").is_in(paper)),
                                                kld_frontier=kf.filter(pl.col("config_id").is_in(paper))), tmp_path / "b")
    assert "Per-layer search" not in plain.markdown.read_text()


def test_provenance_text_that_is_no_object_reads_as_none():
    assert provenance(None) == {} and provenance("[1, 2]") == {} and provenance("{not json") == {}
    assert provenance('{"role": "random"}') == {"role": "random"}

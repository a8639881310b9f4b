"""Writing the report: ``report.md``, a self-contained ``report.html`` and the figures.

:func:`build_report` is the one report pipeline, used by ``mqepi report`` and the demo:
collect the data from the lake, answer RQ1-RQ5, write the files (:func:`write_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mqepi import __version__
from mqepi.quant import maps
from mqepi.results.report import plots, searched, tables
from mqepi.results.report.answers import Analyses, analyse, nothing_to_answer, summary
from mqepi.results.report.data import ReportData, group_filter
from mqepi.results.report.document import Document
from mqepi.results.report.labels import (
    CANNOT,
    ReportError,
    check_origin,
    group_title,
    lake_label,
    power_banner,
    power_label,
    slug,
)
from mqepi.results.report.query import collect

#: What every "Answer flips" section says first.
FLIPS_NOTE = ("Answer flips: questions a configuration answers differently from the family's reference: its base "
              "(the unquantized model) where one was measured, else its most precise measured configuration (highest "
              "bits/weight), named in the table. Flips can change while accuracy does not: a configuration can lose "
              "some questions and win others, which accuracy nets out (\"Accuracy is not all you need\", Dutta et al., 2024).")
TITLE = "mqepi report: per-layer quantization evaluated by energy per intelligence (EPI)"


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]
    #: Full tables written beside the report as CSV (the report shows their first rows).
    tables: list[Path] = field(default_factory=list)


@dataclass
class _Writer:
    """The document being written, the figures folder and the figure files made so far."""

    data: ReportData
    analyses: Analyses
    fig_dir: Path
    doc: Document = field(default_factory=lambda: Document(TITLE))
    figures: list[Path] = field(default_factory=list)
    #: With several hardware profiles: the one this writer's data is of (its id, its description).
    hardware: tuple[str, str] | None = None
    csvs: list[Path] = field(default_factory=list)

    @property
    def suffix(self) -> str:
        """What a top-level heading adds for its hardware ("" with one hardware)."""
        return f", hardware {self.hardware[0]}" if self.hardware else ""

    def stem(self, *parts: str) -> str:
        """A figure's file stem, unique per hardware."""
        return slug(*parts, self.hardware[0] if self.hardware else "")

    def figure(self, caption: str, made: tuple[Path, Path] | None) -> None:
        """Add a figure (PNG, SVG) unless there was nothing to draw."""
        if made is not None:
            self.figures.extend(made)
            self.doc.figure(made[0], made[1], caption)

    def table(self, table: tables.Table, caption: str) -> None:
        self.doc.table(*table, caption)

    def csv(self, frame: pl.DataFrame, stem: str, what: str) -> None:
        """Write ``frame`` (its flat columns) beside the report as ``<stem>.csv`` and link it."""
        path = self.fig_dir.parent / f"{stem}.csv"
        flat = [c for c, t in frame.schema.items() if not isinstance(t, (pl.List, pl.Struct, pl.Array, pl.Object))]
        try:
            frame.select(flat).write_csv(path)
        except OSError as exc:
            raise ReportError(f"cannot write the table {path}: {exc}") from None
        self.csvs.append(path)
        self.doc.link(f"{path.name}: {what} ({frame.height} rows, CSV)", path.name)


def write_report(data: ReportData, out_dir: str | Path, analyses: Analyses | None = None) -> ReportFiles:
    """Write ``report.md``, a self-contained ``report.html`` and ``figures/*.png|svg``. With several
    hardware profiles, one section per hardware, each analysed from its own rows (``analyses``,
    of the whole data, is then not used)."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {fig_dir}: {exc}") from None
    hardware = data.hardware()
    w = _Writer(data, analyses or analyse(data) if len(hardware) <= 1 else None, fig_dir)
    _header(w, hardware)
    for hw in hardware if len(hardware) > 1 else [None]:
        part = w if hw is None else _Writer(data.for_hardware(hw[0]), None, fig_dir, w.doc, w.figures, hw, w.csvs)
        if hw is not None:
            part.analyses = analyse(part.data)
            w.doc.h(1, f"Hardware {hw[0]}")
            w.doc.p(f"Every result below is of the runs measured on {hw[1]} only; runs of different hardware are "
                    "never pooled.")
        _summary_section(part)
        for origin in part.data.origins():
            _origin_section(part, origin)
        _side_by_side_section(part)
    _excluded_section(w)
    _provenance_section(w)
    _method_section(w)
    md_path, html_path = out / "report.md", out / "report.html"
    try:
        md_path.write_text(w.doc.markdown(out))
        html_path.write_text(w.doc.html())
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc}") from None
    return ReportFiles(md_path, html_path, w.figures, w.csvs)


def _header(w: _Writer, hardware: list[tuple[str, str]]) -> None:
    data, snap = w.data, w.data.snapshot
    w.doc.banner(*power_banner(data.power_sources()))
    w.doc.p(f"Generated by mqepi {__version__} from the lake {lake_label(snap.uri) if snap else '(unknown)'}"
            + (f" (snapshot: {snap.n_files} files, sha256 {snap.sha256})" if snap else "")
            + f". Origins: {data.origin} (lab and community are never pooled). "
            "EPI = J/token / composite accuracy; lower is better.")
    if len(hardware) == 1:
        w.doc.p(f"Hardware: {hardware[0][1]}.")
    elif hardware:
        w.doc.p(f"{len(hardware)} hardware profiles, one section each (never pooled): "
                + "; ".join(description for _, description in hardware) + ".")


def _summary_section(w: _Writer) -> None:
    w.doc.h(1, "Summary" + w.suffix)
    groups = w.data.groups()
    if not groups:
        w.doc.p(nothing_to_answer(w.data))
    for origin, model, ps in groups:
        w.doc.p(f"{group_title(origin, model, ps)}:")
        w.doc.bullets([f"{a.rq}: {a.answer}" for a in w.analyses.answers(origin, model, ps)])


def _origin_section(w: _Writer, origin: str) -> None:
    w.doc.h(1, ("Lab results (origin lab)" if origin == "lab" else f"Community results (origin {origin})") + w.suffix)
    if origin != "lab":
        w.doc.p(f"Submitted by {origin.removeprefix('community/')}; analysed on its own, never pooled with lab data.")
    for key in [g for g in w.data.groups() if g[0] == origin]:
        _group_section(w, key)


def _group_section(w: _Writer, key: tuple[str, str, str]) -> None:
    """Results, matched pairs, Pareto analysis and the research questions of one group."""
    origin, model, ps = key
    label, stem = power_label(ps), w.stem(model, origin, ps)
    cs = group_filter(w.data.config_summary, origin, model, ps)
    rq1 = next(r for r in w.analyses.rq1 if r.key == key)
    rq2 = next(r for r in w.analyses.rq2 if r.key == key)
    basis, axis = tables.accuracy_basis(w.data.scoring, origin, model)
    w.doc.h(2, f"{model} ({label})")
    w.doc.p(f"Origin {origin}. Power: {label}. {cs.height} configurations, {int(cs['n_repeats'].fill_null(0).sum())} valid "
            f"repeats used, {int(cs['n_excluded'].fill_null(0).sum())} finished runs excluded as invalid. {basis}".rstrip())
    w.doc.h(3, "Results")
    w.doc.table(tables.RESULTS_HEADERS, tables.results_rows(cs),
                f"{model}, origin {origin}, {label}: medians over valid repeats; 95% intervals of the hierarchical "
                "bootstrap (repeats, questions and the meter drawn together); a value without an interval could not be "
                "given one (the last column says why); identical models under several names are one row. " + basis)
    _flips_section(w, key, cs, basis)
    w.doc.h(3, "Perplexity-matched pairs")
    shown = plots.pairs_shown(rq1.pairs)
    which = ("" if shown.height == rq1.pairs.height else
             f"; the {shown.height} of {rq1.pairs.height} with an EPI difference whose interval excludes 0 first, then "
             "the largest EPI differences (every pair in the CSV below)")
    w.doc.table(tables.PAIRS_HEADERS, tables.pairs_rows(shown),
                f"Pairs shown equivalent in perplexity (TOST: the 90% interval of ln(PPL B / PPL A) over the same text "
                f"chunks inside the margin); {label}{which}")
    if shown.height < rq1.pairs.height:
        w.csv(rq1.pairs, f"pairs-{stem}", "every perplexity-matched pair of this group, with its intervals and flags")
    w.figure(f"EPI and J/token differences of perplexity-matched pairs, {model}, origin {origin}, {label}; filled red: "
             "the 95% interval excludes 0",
             plots.matched_pairs_plot(rq1.pairs, w.fig_dir / f"pairs-{stem}", model=model))
    w.doc.h(3, "Pareto analysis")
    w.table(tables.frontier_table(rq2), f"Accuracy vs J/token; {label}. {basis}")
    w.figure(f"Pareto frontier of accuracy vs J/token, {model}, origin {origin}, {label}; the share of answers "
             "flipped against the base is given beside a configuration's name where known",
             plots.pareto_plot(_with_flips(rq2.frontier, w.data.config_summary), w.fig_dir / f"pareto-{stem}",
                               model=model, accuracy_label=axis))
    _search_section(w, key, stem)
    w.doc.h(3, "Research questions")
    for a in w.analyses.answers(*key):
        w.doc.p(f"{a.rq}. {a.question}")
        w.doc.p(f"Answer: {a.answer}")
        w.doc.p(f"Evidence: {a.evidence} Power: {a.power}.")
        if a.rq == "RQ3":
            _rq3_details(w, key, stem)
        if a.rq == "RQ5":
            _rq5_details(w, key, stem)


def _search_section(w: _Writer, key: tuple[str, str, str], stem: str) -> None:
    """The maps of ``mqepi search`` measured in this group: predicted vs measured, where each lands
    on the KLD-vs-J/token frontier, and whether one is below every paper configuration of equal or
    lower KLD (within intervals). Nothing when the group has no searched map."""
    origin, model, ps = key
    kf = group_filter(w.data.kld_frontier, origin, model, ps)
    if not kf["config_id"].str.starts_with(maps.SEARCH_PREFIX).any():
        return
    cis = w.data.config_summary.select("model", "origin", "power_source", "hardware_id", "config_id",
                                       "j_per_token_ci_low", "j_per_token_ci_high")
    points = kf.join(cis, on=["model", "origin", "power_source", "hardware_id", "config_id"], how="left")
    qc = w.data.quant_config.filter((pl.col("origin") == origin) & (pl.col("model") == model))
    provenances = {c: searched.provenance(p) for c, p in qc.select("config_id", "provenance_json").rows() if p}
    provenances |= searched.file_provenances(model, {c: sha for c, sha in qc.select("config_id", "map_sha256").rows()
                                                     if c.startswith(maps.SEARCH_PREFIX) and c not in provenances})
    compared = searched.compare(points, provenances)
    label = power_label(ps)
    w.doc.h(3, "Per-layer search")
    w.doc.p("Maps written by `mqepi search` (docs/search.md): the least predicted J/token within a KLD budget "
            "(role 'searched'), the least predicted KLD with energy ignored ('kld-only') and a random map of the "
            "same predicted size ('random'), measured like any configuration. Predictions come from the map's "
            "provenance (probes, the additive KLD model, the bytes-to-J/token fit). " + searched.search_summary(compared))
    w.doc.table(searched.SEARCH_HEADERS, searched.search_rows(compared),
                f"Searched maps, {model}, origin {origin}, {label}: KLD against the base (nats/token, median over "
                "repeats), J/token with its 95% interval; a map lower than all paper configurations of equal or lower "
                "KLD 'within intervals' has its interval's upper end below each of their lower ends")
    w.figure(f"KL divergence vs J/token, {model}, origin {origin}, {label}: the paper's configurations and the "
             "searched maps, the KLD frontier drawn",
             plots.kld_plot(kf, w.fig_dir / f"kld-{stem}", model=model))


def _flips_section(w: _Writer, key: tuple[str, str, str], cs: pl.DataFrame, basis: str = "") -> None:
    """Answer flips against the base, and how the accuracy shown was scored."""
    origin, model, ps = key
    flips = group_filter(w.data.answer_flips, origin, model, ps)
    scoring = tables.scoring_lines(w.data.scoring, origin, model)
    if flips.is_empty() and not scoring:
        return
    w.doc.h(3, "Answer flips")
    w.doc.p(FLIPS_NOTE)
    if flips.is_empty():
        w.doc.p("No flips to show: no question the reference and another configuration both answered under the same "
                "scoring rule.")
    else:
        w.doc.table(tables.FLIPS_HEADERS, tables.flips_rows(flips, cs),
                    "Per configuration against the reference, every benchmark pooled (answer_flips, benchmark 'all'): share of "
                    "the questions both answered whose answer differs, 95% Wilson interval over questions (one answer "
                    "per configuration and question: the first valid repeat's); right -> wrong and wrong -> right are "
                    "the flips that change correctness; choice KL = mean KL(reference || config) of the choice distributions. "
                    + basis)
    if scoring:
        w.doc.p("Scoring of the accuracy shown, per benchmark:")
        w.doc.bullets(scoring)


def _with_flips(frontier: pl.DataFrame, cs: pl.DataFrame) -> pl.DataFrame:
    """Frontier rows with config_summary's flip share against the base (for the plot's labels)."""
    keys = ["origin", "model", "power_source", "config_id"]
    return frontier.join(cs.select(*keys, "flip_share"), on=keys, how="left")


def _rq3_details(w: _Writer, key: tuple[str, str, str], stem: str) -> None:
    origin, model, ps = key
    label = power_label(ps)
    rq3 = next(r for r in w.analyses.rq3 if r.key == key)
    fits, bits = tables.sensitivity_tables(rq3)
    w.table(fits, f"RQ3: OLS slopes per extra bit/weight of each layer group; {label}")
    w.table(bits, "RQ3 data: mean bits/weight per layer group (tensor_inventory)")
    w.figure(f"Layer-group sensitivity (RQ3), {model}, origin {origin}, {label}",
             plots.sensitivity_plot([rq3], w.fig_dir / f"sensitivity-{stem}", model=model))


def _rq5_details(w: _Writer, key: tuple[str, str, str], stem: str) -> None:
    origin, model, ps = key
    label = power_label(ps)
    rq5 = next(r for r in w.analyses.rq5 if r.key == key)
    w.table(tables.attribution_table(rq5), f"RQ5: decode energy against bytes read and time per token; {label}")
    w.figure(f"Decode energy attribution (RQ5), {model}, origin {origin}, {label}",
             plots.attribution_plot([rq5], w.fig_dir / f"attribution-{stem}", model=model))


def _side_by_side_section(w: _Writer) -> None:
    """For a model with several groups: one Pareto figure with a panel per group."""
    groups = w.data.groups()
    models = sorted({g[1] for g in groups})
    shared = [m for m in models if len([g for g in groups if g[1] == m]) > 1]
    if not shared:
        return
    w.doc.h(1, "Side by side" + w.suffix)
    w.doc.p("The same model's groups (origins, power sources) in separate panels of one figure, never pooled.")
    for model in shared:
        front = w.data.pareto_frontier.filter(pl.col("model") == model)
        labels = ", ".join(sorted({power_label(s) for s in front["power_source"].drop_nulls().to_list()}))
        w.figure(f"Pareto frontiers of {model} by origin and power source ({labels})",
                 plots.pareto_plot(_with_flips(front, w.data.config_summary), w.fig_dir / f"pareto-{w.stem(model)}-all",
                                   model=model, accuracy_label=_axis_of(w, model)))


def _axis_of(w: _Writer, model: str) -> str:
    """The accuracy axis of a figure with every origin of ``model``: the one basis they share, else generic."""
    labels = {tables.accuracy_basis(w.data.scoring, o, model)[1] for o in w.data.origins()} - {"Accuracy"}
    return labels.pop() if len(labels) == 1 else "Accuracy (composite; each origin's benchmarks in its section)"


def _excluded_section(w: _Writer) -> None:
    w.doc.h(1, "Excluded runs")
    w.table(tables.excluded_table(w.data), "Finished runs left out of every median (run_metrics.valid is false)")


def _provenance_section(w: _Writer) -> None:
    data, snap = w.data, w.data.snapshot
    w.doc.h(1, "Provenance")
    if snap:
        w.doc.p(f"Lake snapshot: {lake_label(snap.uri)}, {snap.n_files} files; sha256 over their sorted names "
                f"(relative to the lake root, one per line): {snap.sha256}.")
        if snap.versions:
            w.doc.p("Delta table versions read (reopen with `mqepi sql --as-of` and these versions): "
                    + ", ".join(f"{t} v{v}" for t, v in snap.versions.items()) + ".")
    else:
        w.doc.p("Lake snapshot: unknown (the report was built from frames, not from a lake).")
    w.doc.p("SQL settings: " + ", ".join(f"{k} = {'default' if v is None else v}" for k, v in data.settings.items()) + "."
            if data.settings else "SQL settings: defaults.")
    headers, rows = tables.provenance_table(data)
    w.doc.table(headers, rows[:200], "Tool versions and settings from run.provenance_json")
    w.table(tables.producers_table(data), "Programs that recorded the runs and quantizations")
    w.table(tables.commits_table(data), "llama.cpp commits of the quantization events")
    w.table(tables.question_sets_table(data), "Question sets (benchmark_answer)")


def _method_section(w: _Writer) -> None:
    w.doc.h(1, "Method")
    w.doc.bullets([
        "Every number is derived from the lake's raw events by the SQL views (docs/sql.md); medians over valid repeats with "
        f"95% intervals of a seeded hierarchical bootstrap (seed {w.data.seed}, {w.data.bootstrap} resamples) that draws "
        "the repeats, the questions (once per resample, shared by every configuration) and each run's meter uncertainty "
        "together; an interval every resample collapses to one value is not shown.",
        "Configurations with the same base and per-tensor types are one model: measured once, shown once with all names.",
        "RQ1: matched_pairs; two configurations are perplexity-matched when the 90% interval of ln(PPL B / PPL A) over the "
        "same text chunks (paired t) lies within the margin (two one-sided tests); an EPI difference counts when its paired "
        "bootstrap 95% interval excludes 0 (2 or more paired repeats); accuracy differences by exact McNemar, p < 0.05.",
        "Accuracy is lm-evaluation-harness's acc: the choice with the highest summed log-likelihood of its "
        "continuation (benchmark_answer.predicted; answers of schema version 1 were scored by llama-perplexity instead, "
        "each benchmark's scoring and its deviations from lm-eval are listed under 'Answer flips'); acc_norm is in "
        "config_summary.accuracy_norm. EPI and every accuracy interval use acc.",
        "Answer flips: per question, the answer of a configuration's first valid repeat against the base's (same "
        "scoring rule, both predictions known); share with a 95% Wilson score interval over questions (answer_flips; "
        "answer_flips_vs(config) for another reference).",
        "RQ2: pareto_frontier; a configuration is on the frontier when no other configuration of its group has accuracy >= "
        "and J/token <= with one strict.",
        "RQ3: OLS of J/token and accuracy on the mean bits/weight of the early, middle and late layers (tensor_inventory); "
        f"'{CANNOT}' when n <= parameters + 2 or every slope's interval includes 0.",
        "RQ4: the mixed configuration with the lowest EPI point estimate against uniform_q4km in size and bits/weight; "
        "a lower EPI is stated only when the two 95% intervals do not overlap.",
        "RQ5: decode J/token against bytes read per generated token and against time per token; roofline fraction = "
        "bytes/token x decode tokens/s / memory bandwidth.",
        "See docs/report.md for the details.",
    ])


@dataclass
class BuiltReport:
    """What :func:`build_report` produced: the data, the answers and (unless summary only) the files."""

    data: ReportData
    analyses: Analyses
    files: ReportFiles | None

    @property
    def summary(self) -> str:
        return summary(self.data, self.analyses)


def build_report(lake, out_dir: str | Path = "report", *, origin: str = "all", bandwidth_gbs: float | None = None,
                 write: bool = True) -> BuiltReport:
    """Collect the report's data from ``lake``, answer RQ1-RQ5 and (with ``write``) write
    report.md, report.html and the figures into ``out_dir``: the one report pipeline of the
    ``mqepi report`` command and the demo."""
    check_origin(origin, option="--origin")
    data = collect(lake, origin=origin, bandwidth_gbs=bandwidth_gbs)
    analyses = analyse(data)
    files = write_report(data, out_dir, analyses) if write else None
    return BuiltReport(data, analyses, files)

"""The report's figures (matplotlib, Agg canvas, no pyplot state): PNG + SVG each.

Every figure names its power source in a panel title and in a footer line; simulated data
says "simulated power (not measured)" inside the figure itself. SVG text stays text
(``svg.fonttype = none``), so the words can be searched. Each (origin, power source)
group gets its own panel: lab and community are never drawn as one series.

Each function takes frames / results of the report's analyses, writes ``<stem>.png`` and
``<stem>.svg`` and returns the two paths, or None when there is nothing to draw.
matplotlib is imported on the first figure (:func:`_matplotlib`), not with this module.
"""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import polars as pl

from mqepi.results.report.labels import CANNOT, LAYER_GROUPS, ReportError, lab_first, power_label
from mqepi.results.report.statistics import excludes_zero

_RC = {
    "svg.fonttype": "none",  # text as <text>, searchable
    "svg.hashsalt": "mqepi",  # stable ids
    "font.size": 8,
    "axes.titlesize": 8,
    "text.usetex": False,
}
_MARKERS = {"uniform": ("o", "#1f77b4"), "mixed": ("^", "#d62728"), "searched": ("D", "#2ca02c")}
_NAMES = {"j_per_token": "J/token", "accuracy": "accuracy", "decode_j_per_token": "decode J/token"}


@functools.cache
def _matplotlib() -> SimpleNamespace:
    """The matplotlib pieces the figures use, imported once, when the first figure is drawn."""
    import matplotlib  # heavy; the CLI imports the report at start-up, so only a figure loads it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy, as above
    from matplotlib.figure import Figure  # heavy, as above
    from matplotlib.ticker import MaxNLocator, MultipleLocator  # heavy, as above

    return SimpleNamespace(rc_context=matplotlib.rc_context, FigureCanvasAgg=FigureCanvasAgg, Figure=Figure,
                           MaxNLocator=MaxNLocator, MultipleLocator=MultipleLocator)


def _panels(df: pl.DataFrame) -> list[tuple[str, str, pl.DataFrame]]:
    """(origin, power_source, rows) per group, lab first."""
    keys = sorted(df.select("origin", "power_source").unique().rows(), key=lambda k: lab_first(*k))
    return [(o, ps, df.filter((pl.col("origin") == o) & (pl.col("power_source") == ps))) for o, ps in keys]


def _figure(n_panels: int, ncols: int = 1, width: float = 7.0, height: float = 4.5) -> tuple:
    """(figure, rows of axes): ``n_panels`` rows of ``ncols`` axes on an Agg canvas."""
    mpl = _matplotlib()
    fig = mpl.Figure(figsize=(width, height * n_panels + 0.6), layout="constrained")
    mpl.FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, ncols, squeeze=False)
    return fig, [list(r) for r in axes]


def _numeric_x(ax, values: list[float] | None = None) -> None:
    """At most ~6 ticks; at the data's own resolution when its values lie on a grid (accuracy
    over 10 questions moves in steps of 0.1: ticks every 0.1, not 0.15)."""
    vals = sorted({round(v, 9) for v in values or [] if v is not None and math.isfinite(v)})
    steps = [b - a for a, b in zip(vals, vals[1:])]
    step = min(steps) if steps else None
    if step and all(abs(d / step - round(d / step)) < 1e-6 for d in steps) and (vals[-1] - vals[0]) / step <= 12:
        ax.xaxis.set_major_locator(_matplotlib().MultipleLocator(step))
    else:
        ax.xaxis.set_major_locator(_matplotlib().MaxNLocator(6))


def _footer(fig, sources: list[str]) -> None:
    labels = sorted({power_label(s) for s in sources})
    simulated = any(s == "simulated" for s in sources)
    text = "Energy: " + "; ".join(labels)
    if simulated:
        text = f"SIMULATED POWER - NOT MEASURED. {text}"
    # a figure-level label, so that constrained layout keeps room for it
    fig.supxlabel(text, fontsize=8, color="#b03a2e" if simulated else "#333",
                  fontweight="bold" if simulated else "normal", parse_math=False)


def _save(fig, stem: Path) -> tuple[Path, Path]:
    stem = Path(stem)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=150, metadata={"Software": None})
        fig.set_layout_engine("none")  # laid out once, by the first draw
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    except OSError as exc:
        raise ReportError(f"cannot write the figure {stem}: {exc}") from None
    return png, svg


def _panel_title(origin: str, power_source: str, what: str) -> str:
    return f"{what}\norigin {origin}, {power_label(power_source)}"


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


#: A panel with more labelled points than this gets numbers on its points and a key beside it.
MAX_NAMED = 10


def _labels(ax, points: list[tuple[float, float, str, bool]], fontsize: float = 6, key: bool = True) -> None:
    """A label per point (x, y, text, bold), moved apart so that none overlaps another or a
    point (adjustText), each joined to its point by a thin line when moved. More than
    :data:`MAX_NAMED` points: each gets a number (in the order of their names) and a key beside
    the axes names them (bold: on the frontier), as a crowded panel cannot hold the names; without
    ``key``, the numbers refer to a key beside another panel of the same points."""
    from adjustText import adjust_text  # with matplotlib: only a figure needs it

    points = [p for p in points if p[0] is not None and p[1] is not None]
    keyed = len(points) > MAX_NAMED
    if keyed:
        order = sorted(range(len(points)), key=lambda i: points[i][2])
        number = {i: k + 1 for k, i in enumerate(order)}
        if key:
            _key(ax, [(number[i], points[i][2], points[i][3]) for i in order], fontsize)
    texts = [ax.text(x, y, str(number[i]) if keyed else text, fontsize=fontsize + (1 if keyed else 0),
                     fontweight="bold" if bold else "normal", parse_math=False)
             for i, (x, y, text, bold) in enumerate(points)]
    if len(texts) > 1:
        adjust_text(texts, ax=ax, expand=(1.2, 1.4) if keyed else (1.05, 1.2),
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.4})


def _key(ax, entries: list[tuple[int, str, bool]], fontsize: float) -> None:
    """The key of numbered points, outside the axes below its legend (two columns past 25)."""
    from matplotlib.legend import Legend  # with matplotlib, as above
    from matplotlib.lines import Line2D  # with matplotlib, as above

    handles = [Line2D([], [], linestyle="none") for _ in entries]
    key = Legend(ax, handles, [f"{n}  {name}" for n, name, _ in entries], loc="lower left", bbox_to_anchor=(1.01, 0.0),
                 fontsize=fontsize, handlelength=0, handletextpad=0, ncols=2 if len(entries) > 25 else 1,
                 title="points", title_fontsize=fontsize, frameon=False, borderaxespad=0)
    for text, (_n, _name, bold) in zip(key.get_texts(), entries):
        text.set_fontweight("bold" if bold else "normal")
    ax.add_artist(key)
    key.set_clip_on(False)  # add_artist clips to the axes: unclipped, the layout makes room for it


def _log_if_spread(ax, values: list[float], what: str, axis: str = "y", ratio: float = 3.0) -> str:
    """A log ``axis`` when the positive values span more than ``ratio`` (one outlier would squash
    the rest into a band): returns the axis label, with ", log scale" when it is one."""
    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if len(vals) > 2 and max(vals) > ratio * min(vals):
        from matplotlib.ticker import FuncFormatter  # with matplotlib, as above

        getattr(ax, f"set_{axis}scale")("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")  # 0.02, not 2 x 10^-2
        scale = getattr(ax, f"{axis}axis")
        scale.set_major_formatter(plain)
        if max(vals) < 10 * min(vals):  # less than a decade: the minor ticks carry the labels
            scale.set_minor_formatter(plain)
        return f"{what}, log scale"
    return what


def _frontier(ax, xs: list[float], ys: list[float], name: str, *, where: str, linewidth: float) -> None:
    """The frontier's points (sorted by x) as a dashed step line named ``name``; a single point
    (it dominates every other) as a star, since a legend line with nothing drawn would mislead."""
    if len(xs) > 1:
        ax.step(xs, ys, "--", where=where, color="#2e7d32", linewidth=linewidth, label=name, zorder=1)
    elif xs:
        ax.plot(xs, ys, "*", color="#2e7d32", markersize=11, zorder=3, label=f"{name} (a single configuration)")


def _jpt_label(ps: str) -> str:
    """The J/token axis's label, saying so when the power is simulated."""
    return "J/token (simulated)" if ps == "simulated" else "J/token"


def _wrap(text: str, width: int = 64) -> str:
    """``text`` in lines of at most ``width`` characters (a legend entry no wider than its panel)."""
    return "\n".join(textwrap.wrap(text, width)) or text


def _err(values, lows, highs) -> list[list[float]]:
    """Asymmetric error bars (never negative; 0 where an interval is missing)."""
    minus = [max(0.0, v - lo) if v is not None and lo is not None else 0.0 for v, lo in zip(values, lows)]
    plus = [max(0.0, hi - v) if v is not None and hi is not None else 0.0 for v, hi in zip(values, highs)]
    return [minus, plus]


# ------------------------------------------------------------------ Pareto


def pareto_plot(frontier: pl.DataFrame, stem: Path, *, model: str,
                accuracy_label: str = "Accuracy (composite)") -> tuple[Path, Path] | None:
    """Accuracy (x) vs J/token (y), as the paper draws it: uniform and mixed with different
    markers, 95% intervals as error bars, every point labelled (with its share of answers flipped
    against the base where ``frontier`` has a known ``flip_share``), the frontier drawn, mixed
    configurations beyond every uniform one ringed. One panel per (origin, power source).
    ``accuracy_label``: the x axis, naming benchmarks, shots and questions (tables.accuracy_basis)."""
    return _group_panels(frontier, stem, f"Pareto frontier of accuracy vs J/token: {model}",
                         functools.partial(_pareto_panel, xlabel=accuracy_label))


def _group_panels(df: pl.DataFrame, stem: Path, title: str, draw) -> tuple[Path, Path] | None:
    """One panel per (origin, power source) of ``df`` drawn by ``draw(ax, rows, power_source)``,
    titled by its group (``title`` names the rest), the power footer; None when ``df`` is empty."""
    if df.is_empty():
        return None
    with _matplotlib().rc_context(_RC):
        panels = _panels(df)
        fig, axes = _figure(len(panels))
        for (origin, ps, rows), (ax,) in zip(panels, axes):
            ax.set_title(f"origin {origin}, {power_label(ps)}", parse_math=False)
            draw(ax, rows, ps)
        fig.suptitle(title, parse_math=False)
        _footer(fig, [p[1] for p in panels])
        return _save(fig, stem)


def _pareto_panel(ax, rows: pl.DataFrame, ps: str, xlabel: str = "Accuracy (composite)") -> None:
    pts = rows.filter(pl.col("accuracy").is_not_null() & pl.col("j_per_token").is_not_null())
    if pts.is_empty():
        _empty(ax, f"no J/token for these configurations ({power_label(ps)})")
        return
    ylabel = _log_if_spread(ax, pts["j_per_token"].to_list(), _jpt_label(ps))
    for kind, (marker, colour) in _MARKERS.items():
        k = pts.filter(pl.col("kind") == kind)
        if k.is_empty():
            continue
        acc, jpt = k["accuracy"].to_list(), k["j_per_token"].to_list()
        ax.errorbar(acc, jpt, xerr=_err(acc, k["accuracy_ci_low"].to_list(), k["accuracy_ci_high"].to_list()),
                    yerr=_err(jpt, k["j_per_token_ci_low"].to_list(), k["j_per_token_ci_high"].to_list()),
                    fmt=marker, color=colour, ecolor=colour, elinewidth=0.6, capsize=2, markersize=5,
                    alpha=0.9, label=kind)
    other = pts.filter(~pl.col("kind").is_in(list(_MARKERS)) | pl.col("kind").is_null())
    if other.height:
        ax.plot(other["accuracy"].to_list(), other["j_per_token"].to_list(), "s", color="#777", label="other")
    on = pts.filter(pl.col("on_frontier").fill_null(False)).sort("accuracy")
    # a staircase: the least J/token that reaches at least each accuracy
    _frontier(ax, on["accuracy"].to_list(), on["j_per_token"].to_list(), "Pareto frontier", where="pre", linewidth=1.2)
    ring = pts.filter(pl.col("mixed_unmatched").fill_null(False))
    if ring.height:
        ax.plot(ring["accuracy"].to_list(), ring["j_per_token"].to_list(), "o", markersize=12, markerfacecolor="none",
                markeredgecolor="#2e7d32", label="mixed, beyond every uniform")
    labels = []
    for r in pts.iter_rows(named=True):
        flips = r.get("flip_share")  # answers flipped against the base, where known
        label = r["config_id"] if flips is None else f"{r['config_id']} ({100 * flips:.0f}% flipped)"
        labels.append((r["accuracy"], r["j_per_token"], label, bool(r["on_frontier"])))
    _labels(ax, labels)
    ax.set_xlabel(xlabel)
    _numeric_x(ax, pts["accuracy"].to_list())
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the data


def kld_plot(kld_frontier: pl.DataFrame, stem: Path, *, model: str) -> tuple[Path, Path] | None:
    """KL divergence from the base (x, log scale: a random map's KLD is far beyond the rest) vs
    J/token (y), the ``kld_frontier`` view's points: paper configurations and the per-layer
    search's maps with their own markers, the frontier drawn as a step line, every point
    labelled. One panel per (origin, power source); point values (no KLD interval exists)."""
    return _group_panels(kld_frontier.filter(pl.col("kld_mean") > 0), stem,
                         f"KL divergence from the base vs J/token: {model}", _kld_panel)


def _kld_panel(ax, rows: pl.DataFrame, ps: str) -> None:
    ylabel = _log_if_spread(ax, rows["j_per_token"].to_list(), _jpt_label(ps))
    for kind, (marker, colour) in _MARKERS.items():
        k = rows.filter(pl.col("kind") == kind)
        if k.height:
            ax.plot(k["kld_mean"].to_list(), k["j_per_token"].to_list(), marker, color=colour, markersize=5,
                    linestyle="none", alpha=0.9, label=kind)
    on = rows.filter(pl.col("on_frontier")).sort("kld_mean")
    _frontier(ax, on["kld_mean"].to_list(), on["j_per_token"].to_list(), "KLD frontier", where="post", linewidth=1.0)
    ax.set_xscale("log")
    _labels(ax, [(r["kld_mean"], r["j_per_token"], r["config_id"], bool(r["on_frontier"])) for r in rows.iter_rows(named=True)])
    ax.set_xlabel("KL divergence from the base (nats/token, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))


# ------------------------------------------------------------------ matched pairs


#: At most this many pairs are drawn (the rest are in the report's CSV of all pairs).
PAIRS_SHOWN = 20


def pairs_shown(pairs: pl.DataFrame, limit: int = PAIRS_SHOWN) -> pl.DataFrame:
    """The pairs that matter, at most ``limit`` per (origin, power source): those whose EPI
    interval excludes 0 first, then by the size of the EPI difference (then of J/token)."""
    if pairs.is_empty():
        return pairs
    differs = pl.col("epi_differs").fill_null(False) if "epi_differs" in pairs.columns else pl.lit(False)
    ranked = pairs.with_columns(_d=differs, _e=pl.col("epi_diff").abs(), _j=pl.col("j_per_token_diff").abs())
    ranked = ranked.sort(["_d", "_e", "_j", "config_a", "config_b"], descending=[True, True, True, False, False],
                         nulls_last=True)
    return ranked.group_by("origin", "power_source", maintain_order=True).head(limit).drop("_d", "_e", "_j")


def matched_pairs_plot(pairs: pl.DataFrame, stem: Path, *, model: str,
                       limit: int = PAIRS_SHOWN) -> tuple[Path, Path] | None:
    """A forest plot per (origin, power source) of the perplexity-matched pairs that matter
    (:func:`pairs_shown`: at most ``limit``): each pair's EPI and J/token difference (B - A) with
    its paired bootstrap 95% interval where one exists (2 or more paired repeats; the axis says
    when none does); filled where the interval excludes 0."""
    if pairs.is_empty():
        return None
    with _matplotlib().rc_context(_RC):
        panels = _panels(pairs)
        shown = {(o, ps): pairs_shown(rows, limit) for o, ps, rows in panels}
        most = max(r.height for r in shown.values())
        fig, axes = _figure(len(panels), ncols=2, width=10.0, height=0.24 * most + 1.4)
        for (origin, ps, rows), (ax_e, ax_j) in zip(panels, axes):
            part = shown[(origin, ps)]
            labels = [f"{b} - {a}" for a, b in part.select("config_a", "config_b").rows()]
            which = f"all {rows.height} pairs" if part.height == rows.height else f"{part.height} of {rows.height} pairs"
            for ax, key, what in ((ax_e, "epi_diff", "EPI"), (ax_j, "j_per_token_diff", "J/token")):
                ax.set_title(f"{what} difference, {which}\norigin {origin}, {power_label(ps)}", parse_math=False)
                _difference_panel(ax, part, key, what, labels if ax is ax_e else [""] * len(labels), ps)
        cut = any(shown[(o, ps)].height < rows.height for o, ps, rows in panels)
        fig.suptitle(f"Perplexity-matched pairs: {model}" + ("\nthe pairs whose EPI interval excludes 0, then the largest "
                                                              "EPI differences; every pair in the CSV beside the report"
                                                              if cut else ""), parse_math=False)
        _footer(fig, [p[1] for p in panels])
        return _save(fig, stem)


def _difference_panel(ax, rows: pl.DataFrame, key: str, what: str, labels: list[str], ps: str) -> None:
    vals = rows[key].to_list()
    if all(v is None for v in vals):
        _empty(ax, f"no {what} differences ({power_label(ps)})")
        return
    ys = list(range(len(labels)))
    lows, highs = rows[f"{key}_ci_low"].to_list(), rows[f"{key}_ci_high"].to_list()
    for y, v, lo, hi in zip(ys, vals, lows, highs):
        if v is None:
            continue
        colour = "#d62728" if excludes_zero(lo, hi) else "#555"
        ax.errorbar([v], [y], xerr=_err([v], [lo], [hi]), fmt="o", color=colour, markersize=4,
                    markerfacecolor="#d62728" if excludes_zero(lo, hi) else "white", capsize=2, elinewidth=0.8)
    ax.axvline(0.0, color="#999", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(ys) - 0.5, -0.5)  # first row on top, no empty band above or below
    n_ci = sum(lo is not None and hi is not None for lo, hi in zip(lows, highs))
    if n_ci == 0:
        interval = "no interval: fewer than 2 paired repeats"
    elif n_ci < len(ys):
        interval = f"95% paired interval for {n_ci} of {len(ys)}; the rest have fewer than 2 paired repeats"
    else:
        interval = "95% paired bootstrap interval"
    ax.set_xlabel(f"{what} of B minus {what} of A ({interval})")
    _numeric_x(ax)
    ax.tick_params(axis="x", labeltop=len(ys) > 12, top=len(ys) > 12)  # a tall panel: ticks on both edges
    ax.grid(alpha=0.3, axis="x")


# ------------------------------------------------------------------ RQ3


def sensitivity_plot(results: list, stem: Path, *, model: str) -> tuple[Path, Path] | None:
    """RQ3: the OLS slope of J/token and of accuracy per extra bit/weight of each layer
    group, with 95% intervals; one row per (origin, power source) result."""
    if not results:
        return None
    with _matplotlib().rc_context(_RC):
        results = sorted(results, key=lambda r: lab_first(r.origin, r.power_source))
        fig, axes = _figure(len(results), ncols=2, width=9.0, height=3.8)
        for res, row in zip(results, axes):
            for ax, (response, fit) in zip(row, list(res.fits.items())[:2]):
                name = _NAMES.get(response, response)
                _slopes_panel(ax, fit, name)
                where = (f"origin {res.origin}, {power_label(res.power_source)}" if response != "accuracy" else
                         f"origin {res.origin} (accuracy: no power involved)")
                ax.set_title(f"{name} per extra bit/weight\n{where}", parse_math=False)
        fig.suptitle(f"Layer-group sensitivity (RQ3): {model}", parse_math=False)
        _footer(fig, [r.power_source for r in results])
        return _save(fig, stem)


def _slopes_panel(ax, fit, name: str) -> None:
    if not fit.coef:
        _empty(ax, f"{CANNOT}\n({fit.reason})")
        return
    from matplotlib.patches import Patch  # with matplotlib, as above

    vals = [fit.coef[f"{g}_bpw"] for g in LAYER_GROUPS]
    err = _err(vals, [fit.ci_low[f"{g}_bpw"] for g in LAYER_GROUPS], [fit.ci_high[f"{g}_bpw"] for g in LAYER_GROUPS])
    colours = ["#d62728" if fit.excludes_zero(f"{g}_bpw") else "#999" for g in LAYER_GROUPS]
    ax.bar(list(LAYER_GROUPS), vals, yerr=err, color=colours, capsize=4, width=0.5)
    handles = [Patch(color="#d62728", label="slope, 95% interval excludes 0"),
               Patch(color="#999", label="slope, 95% interval includes 0")]
    w = fit.without
    if w is not None and w.coef:  # the fit without the influential configurations, beside each bar
        wv = [w.coef[f"{g}_bpw"] for g in LAYER_GROUPS]
        handles.append(ax.errorbar(
            [k + 0.35 for k in range(len(LAYER_GROUPS))], wv, fmt="D", color="black", markersize=3, capsize=2,
            elinewidth=0.8, yerr=_err(wv, [w.ci_low[f"{g}_bpw"] for g in LAYER_GROUPS],
                                      [w.ci_high[f"{g}_bpw"] for g in LAYER_GROUPS]),
            label=_wrap(f"fit without {', '.join(fit.influential)} (Cook's distance > 4/n)"
                        + ("" if w.supported else f"; {CANNOT}"))))
    note = f"n = {fit.n}, R^2 = {fit.r2:.3f}" if fit.r2 is not None else f"n = {fit.n}"
    if not fit.supported:
        note += f"; {CANNOT}"
    ax.legend(handles=handles, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False,
              title=_wrap(note), title_fontsize=7)
    ax.axhline(0.0, color="#555", linewidth=0.8)
    ax.set_ylabel(f"slope ({name} per bit/weight)")
    ax.grid(alpha=0.3, axis="y")


# ------------------------------------------------------------------ RQ5


def attribution_plot(results: list, stem: Path, *, model: str) -> tuple[Path, Path] | None:
    """RQ5: decode J/token against bytes read per token and against time per token, with
    the fitted lines; one row per (origin, power source) result."""
    if not results:
        return None
    with _matplotlib().rc_context(_RC):
        results = sorted(results, key=lambda r: lab_first(r.origin, r.power_source))
        fig, axes = _figure(len(results), ncols=2, width=10.0, height=4.4)
        for res, (ax_b, ax_t) in zip(results, axes):
            for ax, xcol, fit, xlabel, scale in (
                    (ax_b, "gb_per_token", res.fit_bytes, "GB read per generated token", 1.0),
                    (ax_t, "s_per_token", res.fit_time, "ms per generated token", 1e3)):
                ax.set_title(_panel_title(res.origin, res.power_source, "decode J/token"), parse_math=False)
                _decode_panel(ax, res, xcol, fit, xlabel, scale, key=ax is ax_t)
        bw = results[0].bandwidth_gbs
        fig.suptitle(f"Decode energy attribution (RQ5): {model}"
                     + (f"; memory bandwidth {bw:g} GB/s" if bw else "; memory bandwidth unknown"), parse_math=False)
        _footer(fig, [r.power_source for r in results])
        return _save(fig, stem)


def _decode_panel(ax, res, xcol: str, fit, xlabel: str, scale: float, key: bool = True) -> None:
    """Decode J/token against ``xcol`` (times ``scale``) with the fit's line (its term is ``xcol``);
    a log y axis when one configuration's value dwarfs the rest (named in the key)."""
    pts = res.table.filter(pl.col(xcol).is_not_null() & pl.col("decode_j_per_token").is_not_null())
    if pts.is_empty():
        _empty(ax, f"no decode energy with {xlabel} ({power_label(res.power_source)})")
        return
    xs = [x * scale for x in pts[xcol].to_list()]
    ys = pts["decode_j_per_token"].to_list()
    ylabel = _log_if_spread(ax, ys, "decode J/token")
    if xcol == "s_per_token":  # time spans decades when one configuration is slow; bytes never do
        xlabel = _log_if_spread(ax, xs, xlabel, axis="x", ratio=10.0)
    ax.plot(xs, ys, "o", color="#1f77b4", markersize=4)
    lo, hi = min(xs), max(xs)
    if fit.coef and all(math.isfinite(v) for v in fit.coef.values()):
        _line(ax, lo, hi, fit.coef["intercept"], fit.coef[xcol], scale, "-", "#d62728",
              _wrap(f"OLS, R^2 = {fit.r2:.3f}" + ("" if fit.supported else f"; {CANNOT}"), 48))
        _without_line(ax, pts, xcol, fit, scale, lo, hi)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    _labels(ax, [(x, y, c, False) for x, y, c in zip(xs, ys, pts["config_id"].to_list())], fontsize=5, key=key)
    ax.set_xlabel(xlabel)
    if ax.get_xscale() == "linear":
        _numeric_x(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def _line(ax, lo: float, hi: float, b0: float, b1: float, scale: float, style: str, colour: str, label: str) -> None:
    """The fitted line b0 + b1 * x / scale over [lo, hi], drawn in 50 steps so that it stays a
    line on a log y axis (its parts at or below 0 are left out there)."""
    if ax.get_xscale() == "log" and lo > 0:
        xs = [lo * (hi / lo) ** (k / 49) for k in range(50)]  # even steps on the log axis
    else:
        xs = [lo + (hi - lo) * k / 49 for k in range(50)]
    ys = [b0 + b1 * x / scale for x in xs]
    if ax.get_yscale() == "log":
        ys = [y if y > 0 else math.nan for y in ys]
    ax.plot(xs, ys, style, color=colour, linewidth=1, label=label)


def _without_line(ax, pts: pl.DataFrame, xcol: str, fit, scale: float, lo: float, hi: float) -> None:
    """Ring the influential configurations (Cook's distance > 4/n) and draw the fit without them, dashed."""
    if not fit.influential:
        return
    ring = pts.filter(pl.col("config_id").is_in(fit.influential))
    ax.plot([x * scale for x in ring[xcol].to_list()], ring["decode_j_per_token"].to_list(), "o", markersize=9,
            markerfacecolor="none", markeredgecolor="black", label="Cook's distance > 4/n")
    w = fit.without
    if w is not None and w.coef and all(math.isfinite(v) for v in w.coef.values()):
        _line(ax, lo, hi, w.coef["intercept"], w.coef[xcol], scale, "--", "black",
              _wrap(f"without {', '.join(fit.influential)}, R^2 = {w.r2:.3f}" + ("" if w.supported else f"; {CANNOT}"),
                    48))


__all__ = ["pareto_plot", "matched_pairs_plot", "pairs_shown", "sensitivity_plot", "attribution_plot"]

"""``mqepi search``: the energy-aware per-layer search (probe -> fit -> optimise -> verify)."""

from __future__ import annotations

import json
from dataclasses import replace

import typer

from mqepi.cli._common import edge, err, lake, say, split_list, write_data
from mqepi.cli.demo import DemoSettings  # the demo's sweep settings: the maps join its measurements
from mqepi.errors import MqepiError
from mqepi.quant import maps, toolchain
from mqepi.rig.loopback import LoopbackCluster
from mqepi.search import probes as pr
from mqepi.search import run as sr
from mqepi.search import verify as sv
from mqepi.sweep.run import run_sweep

app = typer.Typer()


def _pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        unit, sep, qtype = item.partition("=")
        if not sep or not unit or not qtype:
            raise MqepiError(f"--pin {item!r}: UNIT=TYPE, e.g. L00=Q8_0 or output=Q6_K")
        pins[unit] = qtype
    return pins


@app.command("search")
@edge
def search_command(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Profile id of the model."),
    budget_kld: float | None = typer.Option(
        None, "--budget-kld", help="Largest predicted mean KLD (nats/token) [default: the KLD of uniform --budget-like]."),
    budget_like: str = typer.Option("Q4_K_M", "--budget-like",
                                    help="Without --budget-kld: the budget is the KLD of the uniform map of this type."),
    reference: str = typer.Option(pr.ProbeSettings.reference, help="Reference type of the probes (the rest of each probe)."),
    candidates: str = typer.Option(",".join(pr.PAPER_TYPES), help="Comma list of probed types (the paper's six)."),
    group: int = typer.Option(1, help="Layers per unit."),
    types: str | None = typer.Option(None, help="Comma list of types the search may use (default: every probed type)."),
    pin: list[str] = typer.Option([], "--pin", help="UNIT=TYPE, repeatable: a unit's type fixed (units: L00 ..., output)."),
    max_size_mb: float | None = typer.Option(None, help="Cap on the searched map's data bytes, in MB (default: none)."),
    verify: int = typer.Option(3, "--verify", "-k", help="Searched maps written and measured."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Scale predicted KLD by measured/predicted of the searched maps already measured."),
    measure: bool = typer.Option(True, "--measure/--no-measure",
                                 help="Measure the written maps by a sweep in the demo's setting."),
    ppl_context: int = typer.Option(128, help="KLD context of the probes, tokens (the demo's)."),
    ppl_chunks: int = typer.Option(8, help="KLD chunks of the probes (the demo's)."),
    output_format: str = typer.Option("text", "--format", "-f", help="text or json."),
    plan_only: bool = typer.Option(False, "--plan", help="Only forecast the probes' cost; measure nothing."),
) -> None:
    """Search the per-layer quant map of least predicted J/token within a KLD budget, write the
    best maps (and baselines) as quant_maps/<model>/search-*.json, and measure them."""
    if output_format not in ("text", "json"):
        raise MqepiError(f"--format {output_format!r}: text or json")
    settings = sr.SearchSettings(
        pr.ProbeSettings(model, reference, tuple(split_list([candidates])), group, ppl_context, ppl_chunks),
        budget_kld=budget_kld, budget_like=budget_like, max_size_bytes=int(max_size_mb * 1e6) if max_size_mb else None,
        types=tuple(split_list([types])) if types else None, pinned=_pins(pin), verify=verify,
        calibrate=calibrate)
    sr.check_settings(settings, maps.load_profile(model))  # every bad flag before anything is measured
    lk = lake()
    if plan_only:
        fc = pr.forecast(lk, settings.probe)
        if output_format == "json":
            write_data(json.dumps(fc.__dict__ | {"seconds": fc.seconds}, indent=1) + "\n")
        else:
            say(fc.describe())
        return
    lk.init()
    progress = (lambda line: say(line, err))
    result = sr.run_search(lk, settings, progress)
    paths = sr.write_maps(result)
    for c in result.written:
        j = f", predicted J/token {c.predicted_j_per_token:.4g}" if c.predicted_j_per_token is not None else ""
        say(f"wrote {c.qmap.config_id} ({c.role}): predicted KLD {c.predicted_kld:.5f}, {c.data_bytes / 1e6:.1f} MB{j}", err)
    verdict = None
    if measure:
        baselines = sv.paper_baselines(lk, model, result.budget_kld)
        say(f"measured with the paper configurations of KLD <= {result.budget_kld:.5g} in the same run: "
            + (", ".join(baselines) if baselines else "none in the lake (nothing to compare with)"), err)
        verdict = _measure(lk, [c.qmap.config_id for c in result.written], baselines, progress)
        for line in sv.describe(verdict):
            say(line, err)
    if output_format == "json":
        data = result.summary() | {"maps": [str(p) for p in paths], "verification": verdict}
        write_data(json.dumps(data, indent=1, default=str) + "\n")
    else:
        say(f"{len(paths)} maps in {paths[0].parent}" if paths else "no maps written")


def _measure(lk, config_ids: list[str], baselines: list[str], progress) -> dict:
    """A sweep in the demo's setting (loopback cluster, simulated meter) over the written maps
    and the paper baselines (a sweep of its own name: :func:`mqepi.search.verify.sweep_name`),
    then predicted vs measured and where each lands (:func:`mqepi.search.verify.verdict`)."""
    tc = toolchain.ensure()
    cluster = LoopbackCluster(1, tc.bin_dir).start()
    try:
        measured = config_ids + [b for b in baselines if b not in config_ids]
        spec = replace(DemoSettings().spec(str(cluster.config_path), measured), name=sv.sweep_name(measured))
        pids = {n.name: (lambda name=n.name: cluster.pids(name)) for n in cluster.nodes if n.name != "quant"}
        run_sweep(spec, lk, progress=progress, node_pids=pids)
    finally:
        cluster.stop()
    return sv.verdict(lk, config_ids, spec.name)

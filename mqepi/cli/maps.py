"""``mqepi maps ...``: model profiles and per-layer quant maps."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import edge, err, out, print_frame, safe
from mqepi.quant import expansion, maps
from mqepi.quant.maps import MapError

app = typer.Typer(name="maps", help="Model profiles and per-layer quant maps.", no_args_is_help=True)


def _resolve_map(config: str, model: str | None):
    path = Path(config)
    if path.suffix == ".json" or path.exists():
        qmap = maps.load_map(path)
    else:
        folders = ([maps.maps_dir(model)] if model
                   else sorted(p for p in maps.MAPS_DIR.iterdir() if p.is_dir() and p.name != "models"))
        found = [f / f"{config}.json" for f in folders if (f / f"{config}.json").is_file()]
        if not found:
            raise MapError(f"no map {config!r} under {maps.MAPS_DIR} (give --model or a .json path)")
        if len(found) > 1:
            raise MapError(f"map {config!r} exists for several models ({', '.join(f.parent.name for f in found)}); give --model")
        qmap = maps.load_map(found[0])
    return qmap, maps.load_profile(qmap.model)


@app.command("generate")
@edge
def maps_generate(
    model: str = typer.Option(..., "--model", "-m", help="Profile id (quant_maps/models/<id>.json) or path."),
    folder: Path | None = typer.Option(None, "--out", help="Folder [default: quant_maps/<model>/]."),
) -> None:
    """Write the paper's 24 configurations (6 uniform + 18 mixed) for a model profile."""
    profile = maps.load_profile(model)
    generated = maps.paper_maps(profile)
    paths = maps.write_maps(generated, folder or maps.maps_dir(profile.id))
    early, middle, late = maps.group_bounds(profile.n_layers)
    out.print(f"wrote {len(paths)} maps to {safe(paths[0].parent)} (early {early.start}-{early.stop - 1}, "
              f"middle {middle.start}-{middle.stop - 1}, late {late.start}-{late.stop - 1})", highlight=False, soft_wrap=True)
    _report_identical(generated, profile)


def _report_identical(qmaps, profile) -> None:
    """Notes (stderr) on maps of ``profile`` that are one model: the same layer types under two
    names, or different maps that write identical tensors after llama.cpp's shape fallbacks
    (:func:`mqepi.quant.expansion.effectively_identical`). A sweep measures each model once."""
    qmaps = [m for m in qmaps if m.model == profile.id]
    same = maps.identical_maps(qmaps)
    for a, b in same:
        err.print(f"[yellow]note[/]: {safe(b)} is the same map as {safe(a)} (the paper lists both); a sweep measures "
                  "it once", highlight=False, soft_wrap=True)
    duplicates = {b for _, b in same}
    for ids in expansion.effectively_identical([m for m in qmaps if m.config_id not in duplicates], profile):
        err.print(f"[yellow]note[/]: {safe(' = '.join(ids))} on {safe(profile.id)} (identical tensor types after "
                  "llama.cpp's fallbacks); a sweep measures them once", highlight=False, soft_wrap=True)


@app.command("show")
@edge
def maps_show(
    config: str = typer.Argument(..., help="Config id (e.g. mix_high_early) or a map .json path."),
    model: str | None = typer.Option(None, "--model", "-m", help="Profile id, when the id exists for several models."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor's requested and effective type."),
) -> None:
    """Predict a map's per-group and total bytes and bits/weight before quantizing, and name the
    committed maps that write identical tensors."""
    qmap, profile = _resolve_map(config, model)
    exp = expansion.expand(qmap, profile)
    layers = {g.name: f"{min(g.layers)}-{max(g.layers)} ({g.quant})" for g in qmap.groups}
    rows = [{**r, "layers": layers.get(r["group"], "token_embd/output/norms")} for r in exp.group_sizes()]
    print_frame(pl.DataFrame(rows).select("group", "layers", "tensors", "n_elements", "bytes", "bits_per_weight", "fallbacks"),
                title=f"{qmap.config_id} on {profile.id} ({qmap.kind})")
    out.print(f"total tensor data {exp.data_bytes:,d} bytes, {exp.bits_per_weight:.4f} bits/weight, "
              f"{sum(t.fallback for t in exp.tensors)} shape fallbacks; llama-quantize base ftype {safe(exp.base_ftype)}",
              highlight=False, soft_wrap=True)
    for twin in _same_model_committed(qmap, exp, profile):
        why = ("the same layer types" if twin.layer_types_sha256 == qmap.layer_types_sha256
               else "identical tensor types after llama.cpp's fallbacks")
        err.print(f"[yellow]note[/]: {safe(qmap.config_id)} = {safe(twin.config_id)} on {safe(profile.id)} ({why}; "
                  "a committed map); a sweep measures them once", highlight=False, soft_wrap=True)
    if tensors:
        print_frame(pl.DataFrame([{"tensor": t.name, "group": t.group, "requested": t.requested_type,
                                   "effective": t.effective_type, "bytes": t.n_bytes} for t in exp.tensors]))


def _same_model_committed(qmap, exp, profile) -> list:
    """The committed maps of ``profile`` (``quant_maps/<model>/``) other than ``qmap`` whose
    effective per-tensor types equal ``exp``'s."""
    folder = maps.maps_dir(profile.id)
    committed = maps.load_maps(sorted(folder.glob("*.json")), profile) if folder.is_dir() else []
    return [m for m in committed if m.config_id != qmap.config_id
            and expansion.expand(m, profile).effective_sha256 == exp.effective_sha256]


@app.command("validate")
@edge
def maps_validate(files: list[Path] = typer.Argument(..., help="Map .json files.")) -> None:
    """Check maps against the schema and their model profiles; exit 1 on the first problem.
    Notes which of them are one model (same layer types, or identical tensor types after
    llama.cpp's fallbacks)."""
    loaded = maps.load_maps(files)
    profiles = {}
    for qmap in loaded:
        profiles.setdefault(qmap.model, maps.load_profile(qmap.model))
        maps.check_against_profile(qmap, profiles[qmap.model])
    out.print(f"[green]ok[/]: {len(loaded)} maps valid")
    for profile in profiles.values():
        _report_identical(loaded, profile)


@app.command("profile")
@edge
def maps_profile(
    gguf_file: Path = typer.Argument(..., help="A GGUF file."),
    profile_id: str | None = typer.Option(None, "--id", help="Profile id [default: from general.name]."),
    write: Path | None = typer.Option(None, "--out", help="Write the profile JSON here."),
) -> None:
    """Derive a model profile (layers, heads, tensor names and shapes) from a GGUF header."""
    profile = maps.profile_from_gguf(gguf_file, profile_id)
    if write:
        write.write_text(profile.to_json())
        out.print(f"wrote {safe(write)}", highlight=False, soft_wrap=True)
    out.print(f"{safe(profile.id)}: {safe(profile.arch)}, {profile.n_layers} layers, {profile.n_head} heads / "
              f"{profile.n_head_kv} KV heads, {profile.n_expert} experts, tied embeddings: {profile.tied_embeddings}, "
              f"{len(profile.tensors)} tensors", highlight=False, soft_wrap=True)

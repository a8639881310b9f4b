"""Building a community bundle from runs of a local lake (``mqepi submit``).

:func:`build_bundle` gathers every run-bound event of the chosen runs and the config-bound
events of their configurations, re-stamps them ``origin = community/<submitter>``, states
what the data cannot tell (hardware, meter calibration) in ``manifest.json``, writes the
bundle under a temporary name beside the target, checks it there with the ingest rules and
only then renames it into place: a failed submit leaves nothing at ``out``. Every input (the
submitter id as a whole, the free texts without control characters) is checked before
anything is read or written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mqepi import __version__
from mqepi.community.checks import MONOTONIC
from mqepi.community.manifest import (
    FORMAT,
    FORMAT_VERSION,
    LICENCES,
    MANIFEST,
    file_name,
    origin_for,
    parse_manifest,
    submitter_problems,
)
from mqepi.community.problems import BundleRejected, BundleReport, CommunityError
from mqepi.community.validate import restamp, validate_bundle
from mqepi.lake.durable import fsync_dir, fsync_file
from mqepi.lake.store import Lake
from mqepi.schemas import CONFIG_BOUND, EVENT_TYPES, RUN_BOUND
from mqepi.schemas.events import ORIGIN, is_label

#: Zip entries get this fixed time, so a bundle's bytes depend only on its content.
ZIP_DATE_TIME = (2020, 1, 1, 0, 0, 0)


def build_bundle(lake: Lake, run_ids: list[str], out: str | os.PathLike, *, submitter: str, contact: str,
                 licence: str = "CC-BY-4.0", submitter_name: str | None = None, hardware: dict | None = None,
                 meter_calibration: str = "not stated", node_max_w: float = 50.0,
                 llama_cpp_commit: str | None = None, base_sha256: str | None = None,
                 row_group_rows: int = 262_144) -> Path:
    """Write a bundle of ``run_ids`` from ``lake`` to ``out`` (a folder, or a ``.zip`` file).

    Includes every run-bound event of those runs and the quant_config, quantization and
    tensor_inventory events of their configurations, all re-stamped ``origin =
    community/<submitter>``. ``hardware`` is ``{"nodes": [{name, description, power_min_w,
    power_max_w}]}``; without it every node named in the data gets ``0..node_max_w`` W.
    The bundle is validated before this returns; ``out`` must not exist.
    """
    out, runs = _check_request(run_ids, out, submitter, licence)
    _check_texts({"--contact": contact, "--name": submitter_name, "--hardware": hardware,
                  "--meter-calibration": meter_calibration, "--llama-cpp-commit": llama_cpp_commit,
                  "--base-sha256": base_sha256})
    frames = _gather(lake, runs, origin_for(submitter))
    models = sorted(set().union(*(set(df["model"].to_list()) for df in frames.values())))
    if len(models) != 1:
        raise CommunityError(f"the runs use {len(models)} models ({', '.join(models)}); a bundle holds one base model")
    if base_sha256 is None:
        base_sha256 = _one_quantization_value(frames, "base_sha256", "the base model's sha256", "--base-sha256")
    if llama_cpp_commit is None:
        llama_cpp_commit = _one_quantization_value(frames, "llama_cpp_commit", "the llama.cpp commit", "--llama-cpp-commit")
    files, entries = _encode(frames, row_group_rows)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "submitter": {"id": submitter, **({"name": submitter_name} if submitter_name else {}), "contact": contact},
        "licence": licence,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mqepi_version": __version__, "llama_cpp_commit": llama_cpp_commit,
        "base_model": {"id": models[0], "sha256": base_sha256},
        "hardware": hardware if hardware is not None else _default_hardware(frames, node_max_w),
        "meter": {"type": _meter_type(frames), "calibration": meter_calibration},
        "question_sets": _question_sets(frames),
        "files": entries,
    }
    report = BundleReport(out.name)
    if parse_manifest(json.dumps(manifest).encode(), report) is None:
        raise CommunityError(f"the manifest for {out} is invalid: {report.problems[0]}")
    files[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode()
    _write_bundle(out, files)
    return out


def _check_request(run_ids: list[str], out: str | os.PathLike, submitter: str, licence: str) -> tuple[Path, list[str]]:
    """The bundle path (which must not exist) and the run ids, once the submitter and licence are known good."""
    why = submitter_problems(submitter)
    if not why and (not isinstance(submitter, str) or re.fullmatch(ORIGIN[1:-1], origin_for(submitter)) is None):
        why = ["is not a lowercase slug (a-z, 0-9, '_', '-'; starting with a letter or digit), as a whole"]
    if why:
        raise CommunityError(f"--submitter {submitter!r} {why[0]}")
    if licence not in LICENCES:
        raise CommunityError(f"--licence {licence!r} is not one of {', '.join(LICENCES)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise CommunityError(f"{out} exists; a bundle is never written over anything")
    runs = [r.strip() for r in run_ids if r.strip()]
    if not runs:
        raise CommunityError("no runs given")
    return out, runs


def _check_texts(texts: dict[str, object]) -> None:
    """Every string in ``texts`` (option -> value; lists and objects walked) is free of control
    characters; else :class:`CommunityError` naming the option, where in it, and the value."""
    stack: list[tuple[str, object]] = list(texts.items())
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where} {key!r}", key) for key in value] + [(f"{where}/{key}", v) for key, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}/{i}", v) for i, v in enumerate(value)]
        elif isinstance(value, str) and not is_label(value):
            raise CommunityError(f"{where}: {value[:80]!r} holds a control character; a bundle states text without them")


def _gather(lake: Lake, runs: list[str], origin: str) -> dict[str, pl.DataFrame]:
    """The lab events of ``runs`` and of their configurations, one frame per event type that has
    events, streams in time order, re-stamped ``origin``."""
    parts: dict[str, list[pl.DataFrame]] = {t: [] for t in EVENT_TYPES}
    configs: set[tuple[str, str]] = set()
    for run_id in dict.fromkeys(runs):
        run = lake.read("run", run_id=run_id)
        if run.height == 0:
            raise CommunityError(f"no run {run_id!r} in the lake {lake.uri}")
        for t in RUN_BOUND:
            df = run if t == "run" else lake.read(t, run_id=run_id)
            foreign = df.filter(pl.col("origin") != "lab")
            if foreign.height:
                raise CommunityError(f"run {run_id!r}: {foreign.height} {t} events have origin {foreign['origin'][0]!r}; "
                                     "submit only your own (lab) runs")
            parts[t].append(df)
        configs |= set(run.select("model", "config_id").iter_rows())
    for model, config_id in sorted(configs):
        for t in CONFIG_BOUND:
            parts[t].append(lake.read(t, model=model, config_id=config_id).filter(pl.col("origin") == "lab"))
    frames = {}
    for t, dfs in parts.items():
        df = pl.concat(dfs) if dfs else pl.DataFrame(schema=EVENT_TYPES[t].polars_schema)
        if df.height:
            frames[t] = df
    for t, (column, by) in MONOTONIC.items():
        if t in frames:
            frames[t] = frames[t].sort([*by, column], maintain_order=True)
    return {t: restamp(df, origin) for t, df in frames.items()}


def _one_quantization_value(frames: dict[str, pl.DataFrame], column: str, what: str, option: str) -> str:
    """The one value of ``column`` in the quantization events; else the user must pass ``option``."""
    quant = frames.get("quantization")
    found = sorted(set(quant[column].to_list())) if quant is not None else []
    if len(found) != 1:
        raise CommunityError(f"cannot tell {what} from the lake ({len(found)} values); pass {option}")
    return found[0]


def _default_hardware(frames: dict[str, pl.DataFrame], node_max_w: float) -> dict:
    """Every node named in the data (else the run's host), described as not stated, ``0..node_max_w`` W."""
    names: set[str] = set()
    for t in ("power_sample", "thermal_sample", "phase"):
        if t in frames:
            names |= {n for n in frames[t]["node"].to_list() if n is not None}
    if not names:
        names = set(frames["run"]["host"].to_list())
    return {"nodes": [{"name": n, "description": "not stated", "power_min_w": 0.0, "power_max_w": float(node_max_w)}
                      for n in sorted(names)]}


def _meter_type(frames: dict[str, pl.DataFrame]) -> str:
    """The one power source of the power samples (else of the runs; ``none`` without any)."""
    sources = sorted(set(frames["power_sample"]["power_source"].to_list())) if "power_sample" in frames else []
    if len(sources) > 1:
        raise CommunityError(f"the runs mix power sources {sources}; a bundle states one meter")
    if not sources:
        sources = sorted(set(frames["run"]["power_source"].to_list()) - {"none"})[:1] or ["none"]
    return sources[0]


def _question_sets(frames: dict[str, pl.DataFrame]) -> list[dict]:
    """Per benchmark question set answered: its sha256 and every question id answered from it."""
    if "benchmark_answer" not in frames:
        return []
    groups = frames["benchmark_answer"].group_by("benchmark", "question_set_sha256", maintain_order=True)
    return [{"benchmark": bench, "sha256": qs, "question_ids": sorted(set(group["question_id"].to_list()))}
            for (bench, qs), group in groups]


def _encode(frames: dict[str, pl.DataFrame], row_group_rows: int) -> tuple[dict[str, bytes], list[dict]]:
    """Each frame as a Parquet file (bundle name -> bytes) and its manifest ``files`` entry."""
    files: dict[str, bytes] = {}
    entries = []
    for t, df in frames.items():
        buf = io.BytesIO()
        df.select(list(EVENT_TYPES[t].polars_schema)).write_parquet(buf, compression="zstd", row_group_size=row_group_rows)
        data = buf.getvalue()
        files[file_name(t)] = data
        entries.append({"path": file_name(t), "event_type": t, "sha256": hashlib.sha256(data).hexdigest(),
                        "rows": df.height, "bytes": len(data)})
    return files, entries


def _write_bundle(out: Path, files: dict[str, bytes]) -> None:
    """Write the bundle under a temporary name beside ``out``, check it there with the ingest
    rules, then rename it into place; on any failure (an interrupt included) the temporary
    bundle is removed and nothing appears at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        try:
            _write_files(temp, files, zipped=out.suffix == ".zip")
        except OSError as exc:
            raise CommunityError(f"cannot write bundle {out}: {exc}") from exc
        try:
            validate_bundle(temp)
        except BundleRejected as exc:
            raise CommunityError(f"the bundle for {out} does not pass ingest checks: {exc.report.problems[0]}") from exc
        if out.exists() or out.is_symlink():
            raise CommunityError(f"{out} appeared while the bundle was written")
        try:
            os.rename(temp, out)
            fsync_dir(out.parent)
        except OSError as exc:
            raise CommunityError(f"cannot write bundle {out}: {exc}") from exc
    finally:
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp)
        elif temp.exists() or temp.is_symlink():
            temp.unlink()


def _write_files(temp: Path, files: dict[str, bytes], *, zipped: bool) -> None:
    """``files`` as a zip file or a folder at ``temp`` (a new name), flushed to disk."""
    if zipped:
        with zipfile.ZipFile(temp, "x") as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED if name == MANIFEST else zipfile.ZIP_STORED
                zf.writestr(info, data)
        fsync_file(temp)
        return
    temp.mkdir()
    for name, data in files.items():
        (temp / name).write_bytes(data)
        fsync_file(temp / name)
    fsync_dir(temp)

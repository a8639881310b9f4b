"""The quantize step: map -> recipe -> llama-quantize -> read back -> events.

The output is read back with gguf-py and every tensor's written type is compared with the
prediction: a type that differs from the requested one is an error unless it is llama.cpp's
documented shape fallback, which is recorded (``fallback = true``) and reported. The same
base, map and llama.cpp commit reuse the existing file.

Commands run through an :class:`~mqepi.rig.executor.Executor`: this machine by default, or
the quantization host over SSH (:class:`mqepi.rig.ssh.Remote`), where the recipe is staged,
the file written in the host's work folder and fetched here, sha256-checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf

from mqepi import PRODUCER
from mqepi.errors import MqepiError
from mqepi.lake.durable import sha256_file
from mqepi.quant import assets, maps, toolchain
from mqepi.quant.expansion import Expansion, effective_type, expand
from mqepi.quant.ggml import ggml_name
from mqepi.quant.maps import ModelProfile, QuantMap
from mqepi.rig.executor import Executor, LocalExecutor, int_arg


class QuantizeError(MqepiError):
    """llama-quantize failed, or wrote tensors other than predicted."""


@dataclass(frozen=True)
class Quantized:
    """One quantized file, checked tensor by tensor."""

    config_id: str
    model: str
    path: str
    file_sha256: str
    file_size_bytes: int
    predicted_data_bytes: int
    predicted_file_bytes: int  # base file's header + each predicted tensor padded to the GGUF alignment
    actual_data_bytes: int
    bits_per_weight: float
    fallbacks: int
    duration_s: float
    reused: bool
    effective_map_sha256: str


def output_path(out_dir: Path, qmap: QuantMap, base_sha256: str, commit: str) -> Path:
    key = hashlib.sha256(f"{base_sha256}\n{qmap.sha256}\n{commit}".encode()).hexdigest()[:16]
    return out_dir / qmap.model / f"{qmap.config_id}-{key}.gguf"


def quantize(
    qmap: QuantMap,
    profile: ModelProfile,
    base_path: str | Path,
    base_sha256: str,
    llama_quantize: str | Path,
    llama_cpp_commit: str,
    out_dir: str | Path,
    *,
    lake=None,
    executor: Executor | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Quantized:
    """Quantize ``base_path`` by ``qmap``; check the output; append events to ``lake``.

    ``base_path`` and ``llama_quantize`` are paths where ``executor`` runs (this machine by
    default); the file always ends in ``out_dir`` here."""
    executor = executor or LocalExecutor(Path(out_dir) / ".work")
    where = executor.name
    exp = expand(qmap, profile)
    target = output_path(Path(out_dir), qmap, base_sha256, llama_cpp_commit)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reused = target.is_file()
    if not reused:
        progress(f"{qmap.config_id}: llama-quantize {exp.base_ftype} with {exp.recipe().count(chr(10))} tensor rules "
                 f"on {where}")
        _run_llama_quantize(exp, target, base_path, llama_quantize, threads, executor, progress)
    duration = time.perf_counter() - start
    sidecar = target.with_suffix(".quantization.json")
    host = where
    file_sha = sha256_file(target)
    made = json.loads(sidecar.read_text()) if reused and sidecar.is_file() else None
    if made is not None and made.get("file_sha256") == file_sha and "types" in made:
        # the events describe the quantization that made the file, not this lookup; the
        # types were read back and checked when it was made, and the hash says it is that file
        duration, host = made["duration_s"], made["host"]
        actual = {name: tuple(v) for name, v in made["types"].items()}
    else:
        actual = read_types(target)
    fallbacks = check_types(exp, actual, target)
    data_bytes = sum(n for _, n in actual.values())
    result = Quantized(
        config_id=qmap.config_id, model=qmap.model, path=str(target), file_sha256=file_sha,
        file_size_bytes=target.stat().st_size, predicted_data_bytes=exp.data_bytes,
        predicted_file_bytes=predicted_file_size(exp, base_path), actual_data_bytes=data_bytes,
        bits_per_weight=8 * data_bytes / exp.n_elements, fallbacks=fallbacks, duration_s=round(duration, 3),
        reused=reused, effective_map_sha256=exp.effective_sha256,
    )
    if made is None or made.get("file_sha256") != file_sha or "types" not in made:
        sidecar.write_text(json.dumps({"duration_s": result.duration_s, "host": host, "file_sha256": file_sha,
                                       "types": actual}))
    if lake is not None:
        record(lake, exp, result, actual, base_sha256, llama_cpp_commit, host)
    return result


def _run_llama_quantize(exp: Expansion, target: Path, base_path, llama_quantize, threads: int | None,
                        executor: Executor, progress: Callable[[str], None]) -> None:
    """Stage the recipe, quantize into the executor's work folder (under a ``.partial`` name until
    llama-quantize succeeds), then bring the file to ``target`` (sha256-checked from a remote host)."""
    recipe = executor.stage_file(target.with_suffix(".recipe.txt").name, exp.recipe().encode())
    out = executor.work_path("gguf", target.name)
    cmd = [str(llama_quantize), "--tensor-type-file", recipe, str(base_path), out + ".partial", exp.base_ftype]
    if threads:
        cmd.append(int_arg(threads, "threads", 1))
    result = executor.stream(cmd, progress)
    if result.returncode != 0:
        executor.remove(out + ".partial")
        raise QuantizeError(f"{exp.qmap.config_id}: llama-quantize on {executor.name} exited {result.returncode}:\n"
                            f"{result.tail()}")
    executor.move(out + ".partial", out)
    executor.fetch(out, target)


def predicted_file_size(exp: Expansion, base_path: str | Path) -> int:
    """The output's size before quantizing: the base's header (metadata and tensor infos do
    not change size with the types) plus every tensor padded to the file's alignment."""
    path = Path(base_path)
    stat = path.stat()
    data_offset, alignment = _header_layout(str(path), stat.st_size, stat.st_mtime_ns)
    return data_offset + sum(-(-t.n_bytes // alignment) * alignment for t in exp.tensors)


@functools.lru_cache(maxsize=8)
def _header_layout(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    """(data offset, alignment) of a GGUF file; parsing a tokenizer-sized header takes seconds."""
    reader = gguf.GGUFReader(path)
    field = reader.get_field("general.alignment")
    return reader.data_offset, int(field.contents()) if field is not None else gguf.GGUF_DEFAULT_ALIGNMENT


def read_types(path: Path) -> dict[str, tuple[str, int]]:
    """tensor name -> (written ggml type, bytes), from the file's header."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: (ggml_name(t.tensor_type), int(t.n_bytes)) for t in reader.tensors}


def check_types(exp: Expansion, actual: dict[str, tuple[str, int]], path: Path) -> int:
    """Compare written types with the prediction; return the number of shape fallbacks."""
    missing = [t.name for t in exp.tensors if t.name not in actual]
    if missing:
        raise QuantizeError(f"{path}: tensors missing from the output: {missing[:5]}")
    fallbacks = 0
    for t in exp.tensors:
        written = actual[t.name][0]
        if t.requested_type is None:
            continue
        if written == t.requested_type:
            continue
        if written == effective_type(t.requested_type, t.shape[0]):
            fallbacks += 1
            continue
        raise QuantizeError(
            f"{path}: tensor {t.name} was written as {written}, but the map requested {t.requested_type}"
            f" and llama.cpp's shape fallback for a row of {t.shape[0]} gives {t.effective_type}"
        )
    return fallbacks


def record(lake, exp: Expansion, q: Quantized, actual: dict[str, tuple[str, int]], base_sha256: str, commit: str,
           host: str) -> None:
    """Append the quant_config, quantization and tensor_inventory events of one file
    (the inventory holds the types and sizes actually written)."""
    qmap = exp.qmap
    common = {"model": [qmap.model], "config_id": [qmap.config_id]}
    lake.record("quant_config", {
        **common, "map_sha256": [qmap.sha256], "map_json": [qmap.canonical_json()],
        "n_layers": [exp.profile.n_layers], "kind": [qmap.kind],
    }, producer=PRODUCER)
    lake.record("quantization", {
        **common, "map_sha256": [qmap.sha256], "base_sha256": [base_sha256], "base_ftype": [exp.base_ftype],
        "llama_cpp_commit": [commit], "file_sha256": [q.file_sha256], "effective_map_sha256": [q.effective_map_sha256],
        "file_size_bytes": [q.file_size_bytes], "bits_per_weight": [q.bits_per_weight],
        "duration_s": [q.duration_s], "host": [host],
    }, producer=PRODUCER)
    n = len(exp.tensors)
    lake.record("tensor_inventory", {
        "model": [qmap.model] * n, "config_id": [qmap.config_id] * n, "file_sha256": [q.file_sha256] * n,
        "tensor": [t.name for t in exp.tensors], "layer": [t.layer for t in exp.tensors],
        "group": [t.group for t in exp.tensors], "requested_type": [t.requested_type for t in exp.tensors],
        "effective_type": [actual[t.name][0] for t in exp.tensors],
        "fallback": [t.requested_type is not None and actual[t.name][0] != t.requested_type for t in exp.tensors],
        "n_elements": [t.n_elements for t in exp.tensors], "n_bytes": [actual[t.name][1] for t in exp.tensors],
    }, producer=PRODUCER)



def quantize_embedded(configs: list[str] | None, model: str, lake, *, out_dir: str | Path | None = None,
                      threads: int | None = None, progress: Callable[[str], None] = lambda line: None):
    """Quantize the embedded base model by the named configs (default: all committed maps
    of ``model``), building the toolchain and the base first if needed. Yields each result."""
    if model != assets.MODEL_ID:
        raise QuantizeError(f"only the embedded model {assets.MODEL_ID!r} has a local base; {model!r} needs a quant host")
    profile = maps.load_profile(model)
    folder = maps.maps_dir(model)
    if configs:
        selected = [maps.load_map(c if c.endswith(".json") else folder / f"{c}.json", profile) for c in configs]
    else:
        selected = maps.load_maps(sorted(folder.glob("*.json")), profile)
    tc = toolchain.ensure(progress=progress)
    base = assets.ensure_base_model(progress)
    target_dir = Path(out_dir) if out_dir else toolchain.cache_root() / "gguf"
    for i, qmap in enumerate(selected, 1):
        progress(f"[{i}/{len(selected)}] {qmap.config_id}")
        yield quantize(qmap, profile, base.path, base.sha256, tc.tool("llama-quantize"), tc.llama_cpp_commit,
                       target_dir, lake=lake, threads=threads)

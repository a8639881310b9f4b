"""Exact expansion of a quant map: every tensor's requested and effective type and its bytes.

Expanding a map applies llama.cpp's own per-tensor rules for each group's file type with the
*global* layer index, giving the **requested** type of every tensor; applying llama.cpp's
shape fallback (rows that are not a multiple of 256 cannot hold K-quants) gives the
**effective** type, which is what llama-quantize writes. :meth:`Expansion.recipe` is the
``--tensor-type-file`` that makes llama-quantize write exactly the requested types.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mqepi.quant import ggml
from mqepi.quant.maps import MapError, ModelProfile, QuantMap, TensorInfo, check_against_profile


@dataclass(frozen=True)
class TensorPlan:
    name: str
    layer: int | None
    group: str | None
    shape: tuple[int, ...]
    n_elements: int
    requested_type: str | None  # None: not quantizable (kept as in the base file)
    effective_type: str

    @property
    def fallback(self) -> bool:
        return self.requested_type is not None and self.requested_type != self.effective_type

    @property
    def n_bytes(self) -> int:
        return ggml.tensor_bytes(self.effective_type, self.n_elements)


@dataclass
class Expansion:
    qmap: QuantMap
    profile: ModelProfile
    tensors: list[TensorPlan] = field(default_factory=list)

    @property
    def base_ftype(self) -> str:
        """The FTYPE given to llama-quantize: the most common group ftype (always quantized)."""
        counts = Counter()
        for g in self.qmap.groups:
            if g.quant in ggml.FILE_TYPES and ggml.FTYPE_BASE.get(g.quant, "f16") not in ("f16", "bf16", "f32"):
                counts[g.quant] += len(g.layers)
        return counts.most_common(1)[0][0] if counts else "Q8_0"

    def recipe(self) -> str:
        """A --tensor-type-file: one anchored rule per quantizable tensor."""
        return "".join(
            f"^{re.escape(t.name)}$={t.requested_type}\n" for t in self.tensors if t.requested_type is not None
        )

    @property
    def effective_sha256(self) -> str:
        """Hash of the effective per-tensor types: equal for maps that write the same file."""
        return types_sha256((t.name, t.effective_type) for t in self.tensors)

    def written_sha256(self, written: Mapping[str, str]) -> str:
        """:attr:`effective_sha256` of the types a file actually holds (tensor name -> written
        type, e.g. a ``tensor_inventory``), over this expansion's tensors in its order: equal to
        :attr:`effective_sha256` exactly when the file holds the predicted type everywhere.
        A tensor missing from ``written`` counts as written ``(missing)``."""
        return types_sha256((t.name, written.get(t.name, "(missing)")) for t in self.tensors)

    def differences(self, written: Mapping[str, str]) -> list[tuple[str, str, str]]:
        """(tensor, predicted effective type, written type) wherever they differ."""
        return [(t.name, t.effective_type, written.get(t.name, "(missing)")) for t in self.tensors
                if written.get(t.name, "(missing)") != t.effective_type]

    @property
    def data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.data_bytes / self.n_elements

    def group_sizes(self) -> list[dict]:
        """Bytes and bits/weight per group (global tensors in a group of their own)."""
        rows: dict[str, dict] = {}
        for t in self.tensors:
            key = t.group or "(global)"
            row = rows.setdefault(key, {"group": key, "tensors": 0, "n_elements": 0, "bytes": 0, "fallbacks": 0})
            row["tensors"] += 1
            row["n_elements"] += t.n_elements
            row["bytes"] += t.n_bytes
            row["fallbacks"] += t.fallback
        for row in rows.values():
            row["bits_per_weight"] = round(8 * row["bytes"] / row["n_elements"], 4)
        return list(rows.values())


def types_sha256(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 of ``name=type`` lines in the given order: the effective map hash
    (:attr:`Expansion.effective_sha256`, ``effective_map_sha256`` in the lake)."""
    return hashlib.sha256("\n".join(f"{name}={type_}" for name, type_ in pairs).encode()).hexdigest()


def effectively_identical(qmaps: Iterable[QuantMap], profile: ModelProfile) -> list[list[str]]:
    """Groups (two or more config ids, in the given order) of maps of ``profile`` whose
    expansions give every tensor the same effective type: the same model once quantized
    (after llama.cpp's shape fallbacks), whatever their layer groups say. Maps of another
    model are left out."""
    groups: dict[str, list[str]] = {}
    for m in qmaps:
        if m.model == profile.id:
            ids = groups.setdefault(expand(m, profile).effective_sha256, [])
            if m.config_id not in ids:
                ids.append(m.config_id)
    return [ids for ids in groups.values() if len(ids) > 1]


def requested_type(quant: str, t: TensorInfo, profile: ModelProfile) -> str:
    """llama.cpp's type for tensor ``t`` under file type (or ggml type) ``quant``."""
    if quant in ggml.GGML_TYPE_NAMES:
        return quant
    base = ggml.FTYPE_BASE.get(quant)
    if base is None:
        raise MapError(f"file type {quant!r} has no per-tensor rule in mqepi (known: {', '.join(sorted(ggml.FTYPE_BASE))})")
    kind = t.kind.removesuffix("_exps")
    if t.name == "output.weight" or (t.name == "token_embd.weight" and profile.tied_embeddings):
        return base if base in ("q8_0", "f16", "bf16", "f32") else "q6_K"
    if t.layer is None:
        return base
    n = profile.n_layers
    if kind == "attn_v":
        if quant == "Q2_K":
            gqa = profile.n_head // max(profile.n_head_kv, 1)
            return "q4_K" if gqa >= 4 or profile.n_expert >= 4 else "q3_K"
        if quant in ggml.MORE_BITS_FTYPES and ggml.use_more_bits(t.layer, n):
            return "q6_K"
    elif kind == "ffn_down":
        if quant == "Q2_K":
            return "q3_K"
        if quant in ggml.MORE_BITS_FTYPES and ggml.use_more_bits(t.layer, n):
            return "q6_K"
    elif kind == "attn_output" and quant == "Q2_K":
        return "q3_K"
    return base


def effective_type(requested: str, row_length: int) -> str:
    """What llama.cpp writes for ``requested`` on rows of ``row_length`` weights."""
    t = requested
    for _ in range(2):
        block, _size = ggml.bytes_per_block(t)
        if row_length % block == 0:
            return t
        t = ggml.SHAPE_FALLBACK.get(t, "f16")
    return t if row_length % ggml.bytes_per_block(t)[0] == 0 else "f16"


def expand(qmap: QuantMap, profile: ModelProfile) -> Expansion:
    """Requested and effective type of every tensor of ``profile`` under ``qmap``."""
    check_against_profile(qmap, profile)
    first, last = qmap.group_of(0), qmap.group_of(profile.n_layers - 1)
    exp = Expansion(qmap, profile)
    for t in profile.tensors:
        group = qmap.group_of(t.layer) if t.layer is not None else None
        if not t.quantizable:
            stored = t.type or ("f32" if len(t.shape) == 1 else "f16")
            exp.tensors.append(TensorPlan(t.name, t.layer, group and group.name, t.shape, t.n_elements, None, stored))
            continue
        if t.name == "output.weight" or (t.name == "token_embd.weight" and profile.tied_embeddings):
            quant = qmap.output or last.quant
        elif t.name == "token_embd.weight":
            quant = qmap.token_embd or first.quant
        elif group is not None:
            quant = group.quant
        else:
            quant = first.quant
        req = requested_type(quant, t, profile)
        exp.tensors.append(TensorPlan(t.name, t.layer, group.name if group else None, t.shape, t.n_elements, req,
                                      effective_type(req, t.shape[0])))
    return exp

"""Format constants for GGML / GGUF quantization types.

One module holds every name the rest of mqepi uses for a quantization type, so that the
schemas, the quant-map validator and the recipe writer agree. The numeric codes come from
gguf-py (``gguf.GGMLQuantizationType``, ``gguf.LlamaFileType``); this module adds the
spelling llama.cpp uses on its command line and in its logs.

Two vocabularies exist:

* **ggml tensor types** — what one tensor is stored as (``q4_K``, ``q8_0``, ``f16`` ...).
  llama.cpp prints and parses them as ``ggml_type_name`` does: lower case, except the
  ``_K`` suffix of the K-quants.
* **file types (ftypes)** — the preset ``llama-quantize`` takes as its FTYPE argument
  (``Q4_K_M``, ``Q3_K_S`` ...). An ftype is a recipe: a base tensor type plus rules that
  bump some tensors (``llama_tensor_get_type`` in llama.cpp's ``src/llama-quant.cpp``;
  docs/quant_maps.md, "Expansion").
"""

from __future__ import annotations

import gguf

# ---------------------------------------------------------------------------
# ggml tensor types, spelled as llama.cpp's ggml_type_name() spells them.
# ---------------------------------------------------------------------------


def ggml_name(member: gguf.GGMLQuantizationType) -> str:
    name = member.name.lower()
    # K-quants keep an upper-case K: q4_K, q6_K, q8_K.
    if name.endswith("_k"):
        name = name[:-2] + "_K"
    return name


#: ggml type name -> gguf.GGMLQuantizationType
GGML_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    ggml_name(member): member for member in gguf.GGMLQuantizationType
}

#: Every tensor type name the lake accepts (``requested_type`` / ``effective_type``).
GGML_TYPE_NAMES: frozenset[str] = frozenset(GGML_TYPES)

# ---------------------------------------------------------------------------
# File-level types (llama-quantize FTYPE presets).
# ---------------------------------------------------------------------------


def _ftype_name(member: gguf.LlamaFileType) -> str | None:
    if member.name == "ALL_F32":
        return "F32"
    if member.name.startswith("MOSTLY_"):
        return member.name[len("MOSTLY_") :]
    return None  # GUESSED and other non-presets


#: ftype name -> gguf.LlamaFileType
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    name: member
    for member in gguf.LlamaFileType
    if (name := _ftype_name(member)) is not None
}

#: The six file-level types of the paper's matrix, in increasing size.
PAPER_FILE_TYPES: tuple[str, ...] = ("Q2_K", "Q3_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")

#: Every name accepted where "a quant type" is asked for: ftypes and ggml tensor types.
QUANT_TYPE_NAMES: frozenset[str] = frozenset(FILE_TYPES) | GGML_TYPE_NAMES


def bytes_per_block(type_name: str) -> tuple[int, int]:
    """Return ``(weights_per_block, bytes_per_block)`` for a ggml type name."""
    try:
        member = GGML_TYPES[type_name]
    except KeyError:
        raise KeyError(f"unknown ggml type {type_name!r}; known: {sorted(GGML_TYPE_NAMES)}") from None
    block_size, type_size = gguf.GGML_QUANT_SIZES[member]
    return block_size, type_size


# ---------------------------------------------------------------------------
# llama.cpp's per-tensor rules for the paper's file types (llama-quant.cpp, 2026-08 master;
# docs/quant_maps.md). A file type is a base tensor type plus bumps.
# ---------------------------------------------------------------------------

#: ftype -> the tensor type every quantizable tensor starts at.
FTYPE_BASE: dict[str, str] = {
    "Q2_K": "q2_K",
    "Q3_K_S": "q3_K",
    "Q3_K_M": "q3_K",
    "Q3_K_L": "q3_K",
    "Q4_K_S": "q4_K",
    "Q4_K_M": "q4_K",
    "Q5_K_S": "q5_K",
    "Q5_K_M": "q5_K",
    "Q6_K": "q6_K",
    "Q8_0": "q8_0",
    "Q4_0": "q4_0",
    "Q4_1": "q4_1",
    "Q5_0": "q5_0",
    "Q5_1": "q5_1",
    "F16": "f16",
    "BF16": "bf16",
    "F32": "f32",
}

#: K-quant -> what llama.cpp writes instead when a row (ne0) is not a multiple of 256
#: (llama_tensor_get_type's "incompatible tensor" fallback). Anything still incompatible -> f16.
SHAPE_FALLBACK: dict[str, str] = {
    "q2_K": "q4_0",
    "q3_K": "q4_0",
    "q4_K": "q5_0",
    "q5_K": "q5_1",
    "q6_K": "q8_0",
}

#: ftypes whose attn_v / ffn_down get q6_K on the "more bits" layers.
MORE_BITS_FTYPES = frozenset({"Q4_K_M", "Q5_K_M"})


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's "more bits" layers: the first and last eighth, and every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_bytes(type_name: str, n_elements: int) -> int:
    """Bytes of a tensor of ``n_elements`` weights stored as ``type_name``."""
    block, size = bytes_per_block(type_name)
    if n_elements % block:
        raise ValueError(f"{n_elements} weights do not fill whole {type_name} blocks of {block}")
    return n_elements // block * size

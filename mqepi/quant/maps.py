"""Per-layer quant maps: model profiles, the paper's matrix, validation.

A *map* assigns a quant type to every layer (block) of a model in groups (the paper's JSON
format). Expanding a map applies llama.cpp's own per-tensor rules for each group's file type
with the *global* layer index, giving the **requested** type of every tensor; applying
llama.cpp's shape fallback (rows that are not a multiple of 256 cannot hold K-quants) gives
the **effective** type, which is what llama-quantize writes. The recipe passes one anchored
rule per quantizable tensor, so no built-in heuristic and no layer counter can shift a type.
The expansion itself is :mod:`mqepi.quant.expansion`.

Defaults where a map is silent (documented in docs/quant_maps.md):
* ``output.weight`` follows the rule of the *last* layer's group file type (q6_K for K-quant
  ftypes, q8_0 for Q8_0);
* ``token_embd.weight`` gets the base type of the *first* layer's group file type, or, when
  the model ties its embeddings (no output.weight), the output rule above.
For a uniform map these equal what plain ``llama-quantize <FTYPE>`` does.
Maps and profiles are read strictly (:func:`read_json`, docs/quant_maps.md "Parsing rules");
every problem is one :class:`MapError` line naming the file, the field and the value.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gguf
import jsonschema

from mqepi.errors import MqepiError
from mqepi.quant import ggml

REPO = Path(__file__).resolve().parents[2]
MAPS_DIR = REPO / "quant_maps"
PROFILES_DIR = MAPS_DIR / "models"
MAP_SCHEMA = json.loads(resources.files("mqepi.schemas").joinpath("quant_map.schema.json").read_text())
#: ``\Z``, not ``$`` (which also matches before a trailing newline): ``SLUG.match`` is a full match.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
BLOCK = re.compile(r"blk\.([0-9]{1,9})\.(.+)\.weight\Z")
#: The largest map or profile file read, in bytes (the biggest committed profile is under 50 kB).
MAX_JSON_BYTES = 4 << 20
#: The deepest nesting of JSON objects and arrays in a map or profile (a map needs 4).
MAX_JSON_DEPTH = 32
#: Layer numbers run from 0 to MAX_LAYERS - 1; a profile has at most MAX_LAYERS layers.
MAX_LAYERS = 1024
_MAX_INT_DIGITS = 30  # a JSON integer of more digits is kept as a _HugeInt, never converted
#: Tensors llama.cpp never quantizes, besides 1-D ones: the MoE router.
NEVER_QUANTIZED = ("ffn_gate_inp",)
#: config_id prefixes of the per-layer search's maps, which set :attr:`QuantMap.kind`: a sensitivity
#: probe ('probe': one layer lowered from a reference type) and a map the search produced ('searched').
PROBE_PREFIX = "probe-"
SEARCH_PREFIX = "search-"

#: The paper's 24 configurations: (config_id, early, middle, late, strategy).
PAPER_MATRIX: tuple[tuple[str, str, str, str, str], ...] = (
    ("uniform_q2k", "Q2_K", "Q2_K", "Q2_K", "Uniform Q2_K"),
    ("uniform_q3ks", "Q3_K_S", "Q3_K_S", "Q3_K_S", "Uniform Q3_K_S"),
    ("uniform_q4km", "Q4_K_M", "Q4_K_M", "Q4_K_M", "Uniform Q4_K_M"),
    ("uniform_q5km", "Q5_K_M", "Q5_K_M", "Q5_K_M", "Uniform Q5_K_M"),
    ("uniform_q6k", "Q6_K", "Q6_K", "Q6_K", "Uniform Q6_K"),
    ("uniform_q8", "Q8_0", "Q8_0", "Q8_0", "Uniform Q8_0"),
    ("mix_high_early", "Q6_K", "Q4_K_M", "Q3_K_S", "Protect early, compress late"),
    ("mix_high_late", "Q3_K_S", "Q4_K_M", "Q6_K", "Protect late, compress early"),
    ("mix_high_middle", "Q3_K_S", "Q6_K", "Q3_K_S", "Protect middle only"),
    ("mix_gradient_down", "Q6_K", "Q5_K_M", "Q4_K_M", "Descending precision"),
    ("mix_gradient_up", "Q4_K_M", "Q5_K_M", "Q6_K", "Ascending precision"),
    ("mix_extreme_early", "Q8_0", "Q4_K_M", "Q2_K", "Max early, min late"),
    ("mix_extreme_late", "Q2_K", "Q4_K_M", "Q8_0", "Min early, max late"),
    ("mix_bookend_high", "Q6_K", "Q3_K_S", "Q6_K", "High ends, compressed middle"),
    ("mix_bookend_low", "Q3_K_S", "Q6_K", "Q3_K_S", "Low ends, high middle"),
    ("mix_q5_q4", "Q5_K_M", "Q4_K_M", "Q4_K_M", "Slightly higher early"),
    ("mix_q4_q5", "Q4_K_M", "Q4_K_M", "Q5_K_M", "Slightly higher late"),
    ("mix_q6_q4_q4", "Q6_K", "Q4_K_M", "Q4_K_M", "High early only"),
    ("mix_q4_q4_q6", "Q4_K_M", "Q4_K_M", "Q6_K", "High late only"),
    ("mix_q4_q6_q4", "Q4_K_M", "Q6_K", "Q4_K_M", "High middle only"),
    ("mix_q5_q3_q5", "Q5_K_M", "Q3_K_S", "Q5_K_M", "Squeeze middle"),
    ("mix_q3_q5_q3", "Q3_K_S", "Q5_K_M", "Q3_K_S", "Squeeze ends"),
    ("mix_q6_q3_q4", "Q6_K", "Q3_K_S", "Q4_K_M", "Protect early, squeeze middle"),
    ("mix_q4_q3_q6", "Q4_K_M", "Q3_K_S", "Q6_K", "Protect late, squeeze middle"),
)


class MapError(MqepiError):
    """A quant map or model profile is invalid. The message names file, field and value."""


class _HugeInt:
    """A JSON integer too long to be a layer number or a size, kept as its text so that a message
    can name it (Python refuses to convert integers of over 4300 digits). Neither int nor str."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"{self.text[:12]}... ({len(self.text.lstrip('-'))} digits)"


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key that appears twice (json would keep the last silently)."""
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise MapError(f"field {_show(key)} appears twice in one object")
        obj[key] = value
    return obj


def _no_constant(name: str):
    """Refuse NaN, Infinity and -Infinity (not JSON)."""
    raise MapError(f"non-standard JSON constant {name}")


def _depth(value: object) -> int:
    """How deeply objects and arrays nest in ``value`` (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)) and level <= MAX_JSON_DEPTH + 1:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode_json(data: bytes | str, where: str) -> object:
    """Strict JSON of a map or profile: at most :data:`MAX_JSON_BYTES`, UTF-8, no key twice in one
    object, no NaN / Infinity, nested at most :data:`MAX_JSON_DEPTH` deep; else :class:`MapError`."""
    if len(data) > MAX_JSON_BYTES:
        raise MapError(f"{where}: {len(data)} bytes, more than the {MAX_JSON_BYTES} a map or profile may have")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MapError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        value = json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                           parse_int=lambda t: _HugeInt(t) if len(t.lstrip("-")) > _MAX_INT_DIGITS else int(t))
    except MapError as exc:
        raise MapError(f"{where}: {exc}") from None
    except RecursionError:
        raise MapError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:
        raise MapError(f"{where}: not JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise MapError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_json(path: str | Path, what: str = "map") -> object:
    """A map or profile file through :func:`decode_json`, never reading more than
    :data:`MAX_JSON_BYTES` + 1 bytes; :class:`MapError` naming the file otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise MapError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise MapError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    return decode_json(data, str(path))


# ------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the row length) first
    type: str | None = None  # stored type, where the profile was read from a file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def layer(self) -> int | None:
        m = BLOCK.match(self.name)
        return int(m.group(1)) if m else None

    @property
    def kind(self) -> str:
        m = BLOCK.match(self.name)
        return m.group(2) if m else self.name.removesuffix(".weight")

    @property
    def quantizable(self) -> bool:
        return len(self.shape) >= 2 and self.name.endswith(".weight") and not any(k in self.kind for k in NEVER_QUANTIZED)


@dataclass(frozen=True)
class ModelProfile:
    id: str
    arch: str
    n_layers: int
    n_head: int
    n_head_kv: int
    n_expert: int
    tied_embeddings: bool
    tensors: tuple[TensorInfo, ...]
    source: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "id": self.id, "arch": self.arch, "n_layers": self.n_layers, "n_head": self.n_head,
            "n_head_kv": self.n_head_kv, "n_expert": self.n_expert, "tied_embeddings": self.tied_embeddings,
            "source": self.source,
            "tensors": [{"name": t.name, "shape": list(t.shape), **({"type": t.type} if t.type else {})} for t in self.tensors],
        }, indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str = "<profile>") -> ModelProfile:
        """A profile from its decoded JSON; :class:`MapError` naming ``where``, the field and the value."""
        if not isinstance(data, dict):
            raise MapError(f"{where}: a model profile must be a JSON object, not {type(data).__name__}")
        if not isinstance(data.get("id"), str) or not SLUG.match(data["id"]):
            raise MapError(f"{where}: field id: {_show(data.get('id'))} is not a slug")
        for key, high in (("n_layers", MAX_LAYERS), ("n_head", 1 << 20), ("n_head_kv", 1 << 20), ("n_expert", 1 << 20)):
            if type(data.get(key, 0)) is not int or not 0 <= data.get(key, 0) <= high:
                raise MapError(f"{where}: field {key}: {_show(data.get(key))} is not an integer in 0-{high}")
        try:
            tensors = tuple(TensorInfo(t["name"], tuple(_dim(d) for d in t["shape"]), t.get("type")) for t in data["tensors"])
            return cls(str(data["id"]), str(data["arch"]), int(data["n_layers"]), int(data["n_head"]),
                       int(data["n_head_kv"]), int(data.get("n_expert", 0)), bool(data["tied_embeddings"]),
                       tensors, str(data.get("source", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise MapError(f"{where}: invalid model profile: {type(exc).__name__} {exc}") from None


def _dim(value: object) -> int:
    """A tensor dimension: a plain positive integer (not a bool, a float or a string)."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"tensor dimension {_show(value)} is not a positive integer")
    return value


def load_profile(name_or_path: str | Path) -> ModelProfile:
    """A profile by id (``quant_maps/models/<id>.json``, the id a slug) or by path, read strictly."""
    path = Path(name_or_path)
    by_id = path.suffix != ".json" and not path.is_file()
    if by_id:
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file() or (by_id and not SLUG.match(str(name_or_path))):
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.json"))
        raise MapError(f"no model profile {_show(str(name_or_path))} (known: {', '.join(known)}; or pass a .json path)")
    return ModelProfile.from_dict(read_json(path, "model profile"), str(path))


def profile_from_gguf(path: str | Path, profile_id: str | None = None) -> ModelProfile:
    """Derive a profile from a GGUF file's header with gguf-py."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf-py raises ValueError, OSError, struct errors ...
        raise MapError(f"{path}: cannot read as GGUF: {exc}") from None

    def field(key: str, default=None):
        f = reader.get_field(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if not arch:
        raise MapError(f"{path}: field general.architecture missing")
    n_layers = field(f"{arch}.block_count")
    if n_layers is None:
        raise MapError(f"{path}: field {arch}.block_count missing")
    names = {t.name for t in reader.tensors}
    tensors = tuple(
        TensorInfo(t.name, tuple(int(d) for d in t.shape), ggml.ggml_name(t.tensor_type)) for t in reader.tensors
    )
    name = profile_id or re.sub(r"[^a-z0-9.-]+", "-", str(field("general.name", Path(path).stem)).lower()).strip("-")
    return ModelProfile(
        id=name, arch=str(arch), n_layers=int(n_layers), n_head=int(field(f"{arch}.attention.head_count", 0)),
        n_head_kv=int(field(f"{arch}.attention.head_count_kv", field(f"{arch}.attention.head_count", 0))),
        n_expert=int(field(f"{arch}.expert_count", 0) or 0), tied_embeddings="output.weight" not in names,
        tensors=tensors, source=f"derived from {Path(path).name} by mqepi maps profile",
    )


# ------------------------------------------------------------------ maps


@dataclass(frozen=True)
class LayerGroup:
    name: str
    layers: tuple[int, ...]
    quant: str


@dataclass(frozen=True)
class QuantMap:
    """A map; its :attr:`kind` (docs/quant_maps.md "Kinds"): 'probe' or 'searched' by the config_id's
    prefix (:data:`PROBE_PREFIX`, :data:`SEARCH_PREFIX`), else 'uniform' (one type, neither
    token_embd nor output named) or 'mixed'. Probes are kept out of the paper's results."""

    config_id: str
    model: str
    groups: tuple[LayerGroup, ...]
    token_embd: str | None = None
    output: str | None = None
    strategy: str = ""
    source: str = ""

    @property
    def kind(self) -> str:
        if self.config_id.startswith((PROBE_PREFIX, SEARCH_PREFIX)):
            return "probe" if self.config_id.startswith(PROBE_PREFIX) else "searched"
        explicit = {self.token_embd, self.output} - {None}
        return "uniform" if len({g.quant for g in self.groups}) == 1 and not explicit else "mixed"

    def to_dict(self) -> dict:
        data: dict = {"config_id": self.config_id, "model": self.model}
        if self.strategy:
            data["strategy"] = self.strategy
        data["layer_groups"] = [{"name": g.name, "layers": list(g.layers), "quant": g.quant} for g in self.groups]
        if self.token_embd:
            data["token_embd"] = self.token_embd
        if self.output:
            data["output"] = self.output
        return data

    def canonical_json(self) -> str:
        """Key-sorted compact JSON of what decides the tensors (not the description)."""
        data = self.to_dict()
        data.pop("strategy", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def layer_types_sha256(self) -> str:
        """Hash of the type of every layer (and of the two global tensors), ignoring names."""
        per_layer = sorted((layer, g.quant) for g in self.groups for layer in g.layers)
        return hashlib.sha256(json.dumps([self.model, per_layer, self.token_embd, self.output]).encode()).hexdigest()

    def group_of(self, layer: int) -> LayerGroup:
        for g in self.groups:
            if layer in g.layers:
                return g
        raise MapError(f"{self.source or self.config_id}: layer {layer} is in no group")


def group_bounds(n_layers: int) -> tuple[range, range, range]:
    """Early / middle / late layers: early = late = floor(n/4) layers, middle = the rest.

    32 -> 0-7 / 8-23 / 24-31 (the paper); 30 -> 0-6 / 7-22 / 23-29; 48 -> 0-11 / 12-35 / 36-47.
    """
    if n_layers < 3:
        raise MapError(f"a model needs at least 3 layers for early/middle/late groups, not {n_layers}")
    q = n_layers // 4 or 1
    return range(0, q), range(q, n_layers - q), range(n_layers - q, n_layers)


def paper_maps(profile: ModelProfile) -> list[QuantMap]:
    """The paper's 24 configurations for ``profile``'s layer count."""
    early, middle, late = group_bounds(profile.n_layers)
    return [
        QuantMap(config_id, profile.id, (
            LayerGroup("early", tuple(early), first), LayerGroup("middle", tuple(middle), mid),
            LayerGroup("late", tuple(late), last),
        ), strategy=strategy)
        for config_id, first, mid, last, strategy in PAPER_MATRIX
    ]


def identical_maps(maps: list[QuantMap]) -> list[tuple[str, str]]:
    """Pairs of config ids whose maps give every layer the same type (different ids, same map)."""
    first: dict[str, str] = {}
    pairs = []
    for m in maps:
        if m.layer_types_sha256 in first:
            pairs.append((first[m.layer_types_sha256], m.config_id))
        else:
            first[m.layer_types_sha256] = m.config_id
    return pairs


def parse_map(data, where: str = "<map>", profile: ModelProfile | None = None) -> QuantMap:
    """Validate a decoded JSON map; raise :class:`MapError` naming ``where``, field and value."""
    _check_document(data, where)
    groups = []
    for k, g in enumerate(data["layer_groups"]):
        quant = g["quant"]
        if quant not in ggml.QUANT_TYPE_NAMES:
            hint = _suggest(quant)
            raise MapError(f"{where}: field layer_groups/{k}/quant: unknown quant type {quant!r}{hint}")
        groups.append(LayerGroup(g.get("name") or _default_group_name(k, len(data["layer_groups"])), tuple(g["layers"]), quant))
    for key in ("token_embd", "output"):
        value = data.get(key)
        if value is not None and value not in ggml.QUANT_TYPE_NAMES:
            raise MapError(f"{where}: field {key}: unknown quant type {value!r}{_suggest(value)}")
    names = Counter(g.name for g in groups)
    dup_names = [n for n, c in names.items() if c > 1]
    if dup_names:
        raise MapError(f"{where}: field layer_groups: group name {dup_names[0]!r} used twice")
    seen: dict[int, int] = {}
    for k, g in enumerate(groups):
        for layer in g.layers:
            if layer in seen:
                other = "the same group" if seen[layer] == k else f"layer_groups/{seen[layer]}"
                raise MapError(f"{where}: field layer_groups/{k}/layers: layer {layer} assigned twice (also in {other})")
            seen[layer] = k
    qmap = QuantMap(data["config_id"], data["model"], tuple(groups), data.get("token_embd"), data.get("output"),
                    data.get("strategy", ""), where)
    if profile is not None:
        check_against_profile(qmap, profile)
    return qmap


def _check_document(data, where: str) -> None:
    """A JSON object, nested at most :data:`MAX_JSON_DEPTH` deep, every layer number a plain
    integer (not a bool, not a float) in 0..MAX_LAYERS-1, and valid against the JSON Schema."""
    if not isinstance(data, dict):
        raise MapError(f"{where}: a map must be a JSON object, not {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise MapError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    groups = data.get("layer_groups")
    for k, g in enumerate(groups if isinstance(groups, list) else []):
        layers = g.get("layers") if isinstance(g, dict) else None
        for i, layer in enumerate(layers if isinstance(layers, list) else []):
            field = f"{where}: field layer_groups/{k}/layers/{i}"
            if isinstance(layer, bool) or not isinstance(layer, (int, _HugeInt)):
                raise MapError(f"{field}: {_show(layer)} is not an integer layer number")
            if isinstance(layer, _HugeInt) or not 0 <= layer < MAX_LAYERS:
                raise MapError(f"{field}: layer {layer!r} is outside 0-{MAX_LAYERS - 1}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MAP_SCHEMA).iter_errors(data))
    if error is not None:
        field_path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise MapError(f"{where}: field {_show(field_path, 80, True)}: {_show(error.message, 200, True)}")


def check_against_profile(qmap: QuantMap, profile: ModelProfile) -> None:
    where = qmap.source or qmap.config_id
    if qmap.model != profile.id:
        raise MapError(f"{where}: field model: {qmap.model!r} does not match the profile {profile.id!r}")
    layers = {layer for g in qmap.groups for layer in g.layers}
    beyond = sorted(layer for layer in layers if layer >= profile.n_layers)
    if beyond:
        raise MapError(f"{where}: field layer_groups: layer {beyond[0]} is beyond the model "
                       f"({profile.id} has layers 0-{profile.n_layers - 1})")
    missing = sorted(set(range(profile.n_layers)) - layers)
    if missing:
        raise MapError(f"{where}: field layer_groups: layers {_ranges(missing)} are in no group (every layer exactly once)")


def load_map(path: str | Path, profile: ModelProfile | None = None) -> QuantMap:
    """A map file, read strictly (:func:`read_json`) and checked (:func:`parse_map`)."""
    return parse_map(read_json(path, "map"), str(path), profile)


def load_maps(paths: list[Path], profile: ModelProfile | None = None) -> list[QuantMap]:
    """Several maps; duplicate config ids are an error naming both files."""
    maps, seen = [], {}
    for path in paths:
        m = load_map(path, profile)
        if m.config_id in seen:
            raise MapError(f"{path}: field config_id: {m.config_id!r} already defined in {seen[m.config_id]}")
        seen[m.config_id] = path
        maps.append(m)
    return maps


def maps_dir(profile_id: str) -> Path:
    return MAPS_DIR / profile_id


def write_maps(maps: list[QuantMap], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{m.config_id}.json" for m in maps]
    for m, path in zip(maps, paths):
        path.write_text(json.dumps(m.to_dict(), indent=1) + "\n")
    return paths


def _default_group_name(k: int, n: int) -> str:
    return ("early", "middle", "late")[k] if n == 3 else f"g{k}"


def _show(value: object, limit: int = 60, as_is: bool = False) -> str:
    """``repr(value)`` (``value`` itself with ``as_is``), cut to ``limit`` characters."""
    text = str(value) if as_is else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(value: str) -> str:
    close = difflib.get_close_matches(str(value), sorted(ggml.QUANT_TYPE_NAMES), n=2)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _ranges(values: list[int]) -> str:
    """Sorted distinct integers as runs: [1, 2, 3, 5] -> '1-3, 5'."""
    starts = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v - 1]
    ends = [v for i, v in enumerate(values) if i + 1 == len(values) or values[i + 1] != v + 1]
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in zip(starts, ends))

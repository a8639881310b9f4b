"""A bundle's ``manifest.json`` (the "Manifest" checks of docs/community.md) and who may submit.

The manifest is decoded strictly (UTF-8, standard JSON, no key twice, bounded nesting),
validated against ``manifest.schema.json`` (no other fields allowed), then checked for
consistency (unique nodes with a sane power range, unique question sets and ids, one file
per event type named after it). A submitter id is a slug that is also a safe path component;
a submitter's events carry the origin :func:`origin_for` gives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from mqepi.community.problems import DEFAULT_LIMITS, BundleReport, Limits, short

FORMAT = "mqepi-community-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = json.loads(Path(__file__).with_name("manifest.schema.json").read_text())
LICENCES = tuple(MANIFEST_SCHEMA["properties"]["licence"]["enum"])
#: A submitter id: the origin's slug (schemas/events.py ORIGIN), so also a safe path component.
SUBMITTER_MAX_LEN = 64
SUBMITTER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")


def file_name(event_type: str) -> str:
    """The name of an event type's file in a bundle."""
    return f"{event_type}.parquet"


def origin_for(submitter: str) -> str:
    """The origin stamped on a submitter's events."""
    return f"community/{submitter}"


def submitter_problems(value) -> list[str]:
    """Why ``value`` is not a safe submitter id (empty list if it is)."""
    if not isinstance(value, str):
        return [f"must be a string, not {type(value).__name__}"]
    out = []
    if "/" in value or "\\" in value:
        out.append("contains a path separator")
    if ".." in value:
        out.append("contains '..'")
    if len(value) > SUBMITTER_MAX_LEN:
        out.append(f"is {len(value)} characters, longer than {SUBMITTER_MAX_LEN}")
    if not out and not SUBMITTER_RE.match(value):
        out.append("is not a lowercase slug (a-z, 0-9, '_', '-'; starting with a letter or digit)")
    return out


def parse_manifest(data: bytes, report: BundleReport, limits: Limits = DEFAULT_LIMITS) -> dict | None:
    """Decode and check ``manifest.json``; add every problem to ``report``; None if unusable."""
    manifest = _decode(data, report)
    if manifest is None:
        return None
    before = len(report.problems)
    _check_declared(manifest, limits, report)
    if len(report.problems) > before:
        return None
    _check_schema(manifest, report)
    if len(report.problems) > before:
        return None
    _check_nodes(manifest, report)
    _check_question_sets(manifest, report)
    _check_files(manifest, report)
    return None if len(report.problems) > before else manifest


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _decode(data: bytes, report: BundleReport) -> dict | None:
    """The manifest as a JSON object: UTF-8, standard JSON, no key twice in one object."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add("manifest", MANIFEST, f"manifest.json is not UTF-8 text: {exc}")
        return None
    try:
        manifest = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        report.add("manifest", MANIFEST, f"key {exc.args[0]!r} appears twice in one object")
        return None
    except RecursionError:
        report.add("manifest", MANIFEST, "manifest.json is nested too deeply")
        return None
    except ValueError as exc:
        report.add("manifest", MANIFEST, f"manifest.json is not JSON: {exc}")
        return None
    if not isinstance(manifest, dict):
        report.add("manifest", MANIFEST, f"manifest.json must be a JSON object, not {type(manifest).__name__}")
        return None
    return manifest


def _check_declared(manifest: dict, limits: Limits, report: BundleReport) -> None:
    """The numbers the manifest declares within the limits, before anything (the schema
    validation included) works through them: question ids in all, each file's rows and bytes."""
    sets = manifest.get("question_sets")
    if isinstance(sets, list):
        n = sum(len(q["question_ids"]) for q in sets if isinstance(q, dict) and isinstance(q.get("question_ids"), list))
        if n > limits.max_question_ids:
            report.add("limit", MANIFEST, f"{n} question ids in all, more than the limit {limits.max_question_ids}",
                       column="question_sets", value=n)
    files = manifest.get("files")
    for k, f in enumerate(files if isinstance(files, list) else ()):
        if not isinstance(f, dict):
            continue
        for key, bound, per in (("rows", limits.max_rows_per_file, "per file"), ("bytes", limits.max_total_bytes, "in all")):
            value = f.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > bound:
                report.add("limit", MANIFEST, f"files/{k} declares {value} {key}, more than the limit {bound} {per}",
                           column=f"files/{k}/{key}", value=value)


def _check_schema(manifest: dict, report: BundleReport) -> None:
    """The submitter id is a safe slug (an identity problem), and the whole is valid against the schema."""
    submitter = manifest.get("submitter")
    id_flagged = False
    if isinstance(submitter, dict) and "id" in submitter:
        for why in submitter_problems(submitter["id"]):
            report.add("identity", MANIFEST, f"submitter id {why}", column="submitter/id", value=submitter["id"])
            id_flagged = True
    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    for error in sorted(validator.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path]):
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        if id_flagged and path == "submitter/id":
            continue
        report.add("manifest", MANIFEST, f"field {path}: {short(error.message, 300)}",
                   column=None if path == "(top level)" else path)


def _check_nodes(manifest: dict, report: BundleReport) -> None:
    nodes = [n["name"] for n in manifest["hardware"]["nodes"]]
    for name in sorted({n for n in nodes if nodes.count(n) > 1}):
        report.add("manifest", MANIFEST, f"hardware node {name!r} is listed twice", column="hardware/nodes")
    for k, node in enumerate(manifest["hardware"]["nodes"]):
        if node["power_min_w"] > node["power_max_w"]:
            report.add("manifest", MANIFEST,
                       f"node {node['name']!r}: power_min_w {node['power_min_w']} > power_max_w {node['power_max_w']}",
                       column=f"hardware/nodes/{k}")


def _check_question_sets(manifest: dict, report: BundleReport) -> None:
    keys = [(q["benchmark"], q["sha256"]) for q in manifest["question_sets"]]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        report.add("manifest", MANIFEST, f"question set {key[0]} {key[1][:12]}... is listed twice", column="question_sets")
    for k, qs in enumerate(manifest["question_sets"]):
        ids = qs["question_ids"]
        if len(set(ids)) != len(ids):
            report.add("manifest", MANIFEST, "question_ids repeat an id", column=f"question_sets/{k}/question_ids")


def _check_files(manifest: dict, report: BundleReport) -> None:
    paths = [f["path"] for f in manifest["files"]]
    types = [f["event_type"] for f in manifest["files"]]
    for k, f in enumerate(manifest["files"]):
        if f["path"] != file_name(f["event_type"]):
            report.add("manifest", MANIFEST, f"file {f['path']!r} must be named {file_name(f['event_type'])}",
                       column=f"files/{k}/path")
    for dup in sorted({p for p in paths if paths.count(p) > 1} | {t for t in types if types.count(t) > 1}):
        report.add("manifest", MANIFEST, f"{dup!r} is listed twice in files", column="files")

"""Validating an untrusted bundle in a child process, under a memory limit and a timeout.

The drop folder (:func:`~mqepi.community.ingest.ingest_drop_folder`) checks each new bundle
here before :func:`~mqepi.community.ingest.ingest` touches it, so that a bundle that kills
its validator (by memory or by time) is recorded as rejected instead of killing every pass.

:func:`validate_isolated` runs ``python -m mqepi.community.sandbox REQUEST`` with the same
interpreter. The child caps its address space (``RLIMIT_AS``), runs
:func:`~mqepi.community.validate.validate_bundle` without a lake (it reads only the bundle)
and writes its outcome as JSON to a file the parent named. Only that JSON crosses back (a
status and the report's plain fields), never a pickle, so nothing of the bundle becomes an
object in the parent. A child killed by a signal, out of memory or past the timeout is an
outcome too: :class:`Isolated` carries a report with that reason.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mqepi.community.problems import DEFAULT_LIMITS, BundleRejected, BundleReport, CommunityError, Limits, Problem, short
from mqepi.community.validate import validate_bundle

#: Seconds one bundle's validation may take in the child.
DEFAULT_TIMEOUT_S = 900.0
#: The child's address space beyond what the limits let a bundle decode to: the interpreter,
#: polars and pyarrow with their thread pools and arenas (measured: 1.6 to 2.4 GiB of address
#: space before any bundle is read, by the number of cores).
BASE_ADDRESS_SPACE = 4 * 1024**3
#: Address space per byte a bundle may decode to: twice what validation was measured to take
#: (benchmarks/ingest_memory.py: 1.7 GiB more address space, 1.5 GiB more resident memory, for a
#: bundle decoding to 446 MiB). With the default limits, 12 GiB of address space in all.
ADDRESS_SPACE_PER_DECODED_BYTE = 8
#: The largest result file the parent reads (a report holds at most a few hundred short problems).
MAX_RESULT_BYTES = 4 * 1024**2
#: The child's thread pools and malloc arenas, kept small so its address space tracks its memory.
CHILD_ENV = {"POLARS_MAX_THREADS": "2", "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
STATUSES = ("valid", "rejected", "memory", "killed", "timeout", "error")


@dataclass
class Isolated:
    """What the child said about a bundle: ``valid``, ``rejected`` (``report`` lists why), or why
    it did not finish (``memory``, ``killed``, ``timeout``, ``error``: ``report`` holds that reason)."""

    status: str
    report: BundleReport
    events: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "valid"


def default_memory_limit(limits: Limits) -> int:
    """The child's address-space limit for bundles within ``limits``."""
    return BASE_ADDRESS_SPACE + ADDRESS_SPACE_PER_DECODED_BYTE * limits.max_decoded_bytes


def validate_isolated(bundle: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, memory_limit_bytes: int | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> Isolated:
    """Validate ``bundle`` (no lake) in a child process with at most ``memory_limit_bytes`` of
    address space (default :func:`default_memory_limit`) and ``timeout_s`` seconds.

    Raises :class:`CommunityError` only when the child could not start validating (the
    environment, not the bundle, is at fault); every other end is an :class:`Isolated`."""
    path = Path(bundle).absolute()
    memory = memory_limit_bytes if memory_limit_bytes is not None else default_memory_limit(limits)
    with tempfile.TemporaryDirectory(prefix="mqepi-sandbox-") as tmp:
        files = {k: Path(tmp, f"{k}.json") for k in ("request", "started", "result")}
        files["request"].write_text(json.dumps({"bundle": str(path), "limits": asdict(limits), "memory_limit_bytes": memory,
                                                "started": str(files["started"]), "result": str(files["result"])}))
        stderr = Path(tmp, "stderr.txt")
        try:
            with open(stderr, "wb") as err:
                proc = subprocess.run([sys.executable, "-m", "mqepi.community.sandbox", str(files["request"])],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      env={**os.environ, **CHILD_ENV}, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:  # run() has killed the child
            return _failed(path, "timeout", f"validation took longer than the limit {timeout_s:g} s; stopped")
        except OSError as exc:
            raise CommunityError(f"cannot start the validator for {path.name}: {exc}") from exc
        if files["result"].exists():
            return _read_result(path, files["result"])
        if not files["started"].exists():
            raise CommunityError(f"the validator for {path.name} failed before reading it (exit {proc.returncode}): "
                                 f"{_tail(stderr)}")
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else proc.returncode
            return _failed(path, "killed", f"validation was killed by signal {name} (memory limit {memory} bytes of "
                           f"address space)")
        return _failed(path, "error", f"validation stopped without a result (exit {proc.returncode}): {_tail(stderr)}")


def _failed(path: Path, status: str, detail: str) -> Isolated:
    report = BundleReport(path.name)
    report.add("limit" if status in ("memory", "killed", "timeout") else "bundle", None, detail)
    return Isolated(status, report)


def _tail(path: Path, n: int = 300) -> str:
    """The last line of a child's stderr, at most ``n`` characters."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return short(lines[-1], n) if lines else "no message"


def _read_result(path: Path, result: Path) -> Isolated:
    """The child's JSON outcome, checked field by field (it is data about an untrusted bundle)."""
    if result.stat().st_size > MAX_RESULT_BYTES:
        return _failed(path, "error", f"the validator's result is larger than {MAX_RESULT_BYTES} bytes")
    try:
        data = json.loads(result.read_text("utf-8"))
        status, raw = data["status"], data["report"]
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        report = BundleReport(path.name, sha256=raw.get("sha256"), submitter=raw.get("submitter"))
        keys = ("check", "file", "detail", "column", "row", "value")
        report.problems = [Problem(**{k: p.get(k) for k in keys}) for p in raw["problems"]]
        return Isolated(status, report, int(data.get("events", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return _failed(path, "error", f"the validator's result is not readable: {short(str(exc), 200)}")


# ------------------------------------------------------------------ the child


def _limit_memory(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (never above a hard limit already set)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _child_outcome(bundle: Path, limits: Limits) -> dict:
    """Validate ``bundle``; the outcome as plain JSON-able data."""
    try:
        checked = validate_bundle(bundle, limits=limits)
    except BundleRejected as exc:
        return {"status": "rejected", "report": exc.report.to_dict()}
    except MemoryError:
        report = BundleReport(bundle.name)
        report.add("limit", None, "validation ran out of memory (the validator's address-space limit)")
        return {"status": "memory", "report": report.to_dict()}
    except Exception as exc:  # noqa: BLE001 - a bundle that breaks the validator is rejected with the reason
        report = BundleReport(bundle.name)
        report.add("bundle", None, f"validation failed: {type(exc).__name__}: {short(str(exc), 200)}")
        return {"status": "error", "report": report.to_dict()}
    report = BundleReport(bundle.name, sha256=checked.sha256, submitter=checked.submitter)
    return {"status": "valid", "report": report.to_dict(), "events": checked.events}


def main(argv: list[str]) -> int:
    """The child: read the request, cap memory, say it started, validate, write the outcome."""
    request = json.loads(Path(argv[0]).read_text())
    _limit_memory(int(request["memory_limit_bytes"]))
    limits = Limits(**request["limits"])
    Path(request["started"]).write_text("{}")
    outcome = _child_outcome(Path(request["bundle"]), limits)
    Path(request["result"]).write_text(json.dumps(outcome, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

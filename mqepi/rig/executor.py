"""Where a tool runs: this machine (:class:`LocalExecutor`) or a node over SSH
(:class:`mqepi.cluster.ssh.Remote`). Both offer the same three calls, so the quality engine,
the quantizer and the sweep do not care which:

* ``stream(cmd, progress)`` runs an argument list; every output line (stdout and stderr
  merged) is stamped with UTC ns on arrival; returns a :class:`Stamped` (exit status, lines);
* ``stage_file(name, data)`` puts bytes where the tool can read them; returns that path;
* ``provide(local_path, sha256)`` makes a local file available there (copied and checked
  when remote, the path itself here); returns the path the tool should use.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stamped:
    returncode: int
    lines: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)


def run_stamped(cmd: list[str], progress: Callable[[str], None] = lambda line: None, stdin: bytes | None = None) -> Stamped:
    """Run ``cmd`` locally, stamping every output line (stdout and stderr merged) with UTC ns."""
    lines: list[tuple[int, str]] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin else None,
                          text=True, errors="replace") as proc:
        if stdin:
            proc.stdin.write(stdin.decode())
            proc.stdin.close()
        for line in proc.stdout:
            lines.append((time.time_ns(), line))
            progress(line.rstrip())
    return Stamped(proc.returncode, lines)


class LocalExecutor:
    """Runs tools on this machine; staged files go to ``work_dir/staging`` (a temporary
    folder unless given), written only when their content changed."""

    name = "local"

    def __init__(self, work_dir: str | Path | None = None):
        self.host = socket.gethostname()
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "mqepi-staging"

    def stream(self, cmd: list[str], progress: Callable[[str], None] = lambda line: None,
               timeout: float | None = None) -> Stamped:
        return run_stamped([str(c) for c in cmd], progress)

    def stage_file(self, name: str, data: bytes) -> str:
        target = self.work_dir / "staging" / name
        if not target.is_file() or hashlib.sha256(target.read_bytes()).digest() != hashlib.sha256(data).digest():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{time.time_ns():x}.partial")
            partial.write_bytes(data)
            partial.replace(target)
        return str(target)

    def provide(self, local: str | Path, sha256: str) -> str:
        return str(local)

"""``mqepi cluster ...``: check a Pi cluster, or run a loopback one on this machine."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import edge, print_frame, say
from mqepi.quant import toolchain
from mqepi.rig import config as cfg
from mqepi.rig import ops
from mqepi.rig.loopback import LoopbackCluster

app = typer.Typer(name="cluster", help="The Pi cluster: check it, or run a loopback one on this machine.",
                  no_args_is_help=True)


@app.command("check")
@edge
def cluster_check(config: Path = typer.Argument(..., help="Cluster config (TOML).")) -> None:
    """Connect to every node: reachability, llama.cpp commit, binaries, disk, memory, temperature."""
    reports = ops.check(cfg.load(config))
    print_frame(pl.DataFrame([{"node": r.name, "role": r.role, "reachable": r.reachable, "llama.cpp": r.llama_cpp_commit,
                               "free_disk_mb": r.free_disk_mb, "mem_available_mb": r.memory_available_mb,
                               "temp_c": r.temperature_c, "problems": "; ".join(r.problems)} for r in reports]),
                title=f"cluster {config}")
    if any(r.problems for r in reports):
        raise ops.ClusterError(f"{sum(bool(r.problems) for r in reports)} of {len(reports)} hosts are not ready")


@app.command("local")
@edge
def cluster_local(
    nodes: int = typer.Option(3, "--nodes", "-n", help="Nodes (the first is the head, the rest RPC workers)."),
    root: Path | None = typer.Option(None, "--root", help="Folder for keys, config and node folders [default: temporary]."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds [default: Ctrl-C]."),
) -> None:
    """Start a loopback cluster (an OpenSSH sshd per node on 127.0.0.1 with generated keys) and write its config."""
    tc = toolchain.ensure()
    with LoopbackCluster(nodes, tc.bin_dir, root) as lc:
        server = "OpenSSH sshd" if lc.ssh_server == "openssh" else "asyncssh's server (no sshd here)"
        say(f"loopback cluster of {nodes} nodes + a quant host, SSH by {server}; config: {lc.config_path}")
        say(f"try: mqepi cluster check {lc.config_path}   (Ctrl-C stops and tears everything down)")
        try:
            time.sleep(duration) if duration is not None else time.sleep(10**9)
        except KeyboardInterrupt:
            pass

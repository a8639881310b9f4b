"""The process tree read from /proc: children and grandchildren found, ended processes absent; a
loopback node's processes found by its SSH port (sshd excluded) and its pid files."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

from mqepi.rig import config as cfg
from mqepi.rig.loopback import LoopbackCluster
from mqepi.rig.processes import NodeProcesses, descendants, is_sshd, listener_pid, loopback_host
from mqepi.rig.ssh import Remote, close_connections
from mqepi.sweep.rig import Node, Rig
from mqepi.sweep.spec import SweepSpec


def test_descendants_follow_the_tree_and_skip_ended_processes():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "child = subprocess.Popen(['sleep', '30'])\nprint(child.pid, flush=True)\ntime.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(parent.stdout.readline())
        assert descendants(parent.pid) == [grandchild]
        assert parent.pid in descendants(os.getpid())
    finally:
        subprocess.run(["kill", str(grandchild)])
        parent.kill()
        parent.wait()
    assert descendants(parent.pid) == []  # a reaped process: no /proc entry, no error


def test_listener_pid_finds_the_process_listening_on_a_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert listener_pid(port) is None  # bound, not listening
        s.listen()
        assert listener_pid(port) == os.getpid()
    assert listener_pid(port) is None
    assert loopback_host("127.0.0.1") and loopback_host("127.3.2.1") and loopback_host("::1")
    assert not loopback_host("10.0.0.20") and not loopback_host("pi0.lab")


def _wait_for(path, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def test_a_loopback_nodes_processes_are_found_by_its_port_without_sshd(tmp_path):
    """What a Prefect worker's sweep has (no node_pids): the node's SSH port and work folder."""
    with LoopbackCluster(1, tmp_path / "bin", tmp_path / "cluster", quant_host=False) as lc:
        config = cfg.load(lc.config_path)
        head, node = config.head, lc.nodes[0]
        found = NodeProcesses(head.port, head.work_dir)
        assert found.listener is None and found() == []
        if node.sshd is not None:
            assert found.listener == listener_pid(head.port) == node.sshd.process.pid
        marker = tmp_path / "sleeper.txt"
        session = threading.Thread(target=lambda: Remote(head, config).run(f"sleep 5 & echo $! > '{marker}'; wait"))
        session.start()
        try:
            sleeper = _wait_for(marker)
            pids = found()
            assert sleeper in pids
            assert not [p for p in pids if is_sshd(p)]  # the listener and its per-connection sshds excluded
            if node.sshd is not None:
                assert set(node.sshd.pids()) <= set(pids) and node.sshd.process.pid not in pids
            server = Remote(head, config).start_background(["sleep", "30"], f"{head.work_dir}/rpc.log")
            assert server in found()  # a background server: its pid file under the node's work_dir
        finally:
            session.join()
            close_connections(config)
        assert sleeper not in found() and server in found()
    deadline = time.monotonic() + 5
    while found() and time.monotonic() < deadline:  # the killed server: gone (or a zombie) soon after
        time.sleep(0.05)
    assert found() == []


def test_a_sweep_without_node_pids_drives_loopback_channels_by_their_port_and_says_so(tmp_path):
    with LoopbackCluster(1, tmp_path / "bin", tmp_path / "cluster", quant_host=False) as lc:
        config = cfg.load(lc.config_path)
        far = dataclasses.replace(config.head, name="pi1", host="10.0.0.21", role="worker", meter_channel=1)
        lines: list[str] = []
        rig = Rig(SweepSpec(cluster=str(lc.config_path)), None, progress=lines.append)
        rig.config = dataclasses.replace(config, nodes=(*config.nodes, far))
        rig.nodes = [Node("node0", 0), Node("pi1", 1)]
        rig._power_sources()
        assert set(rig.node_pids) == {"node0"}  # a node elsewhere has a real meter
        assert isinstance(rig.node_pids["node0"], NodeProcesses) and rig.node_pids["node0"].port == config.head.port
        assert lines == [f"simulated power driven by CPU time: channel 0 (node0) <- processes serving "
                         f"127.0.0.1:{config.head.port} (its sshd's sessions, pid files under {config.head.work_dir}); "
                         "channel 1 (pi1) <- nothing on this machine (flat idle power)"]
        given = {"node0": lambda: []}
        rig = Rig(SweepSpec(cluster=str(lc.config_path)), None, progress=lines.append, node_pids=given)
        rig.config, rig.nodes = config, [Node("node0", 0)]
        rig._power_sources()
        assert rig.node_pids is given and lines[-1].endswith("channel 0 (node0) <- the processes the caller names")

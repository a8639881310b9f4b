"""The process tree of this machine, read from ``/proc``: which processes a command started.

The simulated meter charges a node's channel with the CPU time of that node's processes, and
a loopback node's processes are the descendants of its sessions' commands: found from the
port its SSH server listens on (``/proc/net/tcp`` for the socket, ``/proc/*/fd`` for its
process) and the pid files of the servers it started. Processes come and go while the tree is
read; one that ends mid-read is simply not in the answer.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

#: The state column of a listening socket in /proc/net/tcp.
LISTEN = "0A"


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc/<pid>/task/*/children), parents before children."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:  # ended (or never was) while we looked
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:  # the thread or the process ended
                continue
            for child in children:
                out.append(int(child))
                todo.append(int(child))
    return out


def is_sshd(pid: int) -> bool:
    """Whether process ``pid`` is an sshd (the listener, a connection's or a session's)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"
    except OSError:
        return False


def session_pids(pid: int) -> list[int]:
    """What an SSH server's sessions run now: the descendants of its listener ``pid`` that are
    not sshd themselves (OpenSSH forks an sshd per connection and per session)."""
    return [child for child in descendants(pid) if not is_sshd(child)]


def listening_inodes(port: int) -> set[int]:
    """The socket inodes of the TCP sockets of this machine that LISTEN on ``port`` (any
    address), from ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 on this kernel
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    inodes.discard(0)
    return inodes


def listener_pid(port: int) -> int | None:
    """The process of this machine that listens on TCP ``port`` (its socket found through
    ``/proc/*/fd``), or None when none of this user's processes does. Where several hold the
    socket (a forked child that kept it), the one whose parent does not."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not wanted:
        return None
    holders = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:  # ended, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    holders.add(int(entry))
                    break
            except OSError:
                continue
    roots = [pid for pid in holders if parent(pid) not in holders]
    return min(roots or holders, default=None)


def parent(pid: int) -> int | None:
    """The parent of ``pid`` (None once it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def pid_file_pids(folder: str | Path) -> list[int]:
    """The live processes named by the ``*.pid`` files under ``folder`` (the background
    servers a node started, such as RPC workers), with their descendants."""
    alive = []
    for pid_file in sorted(Path(folder).glob("**/*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (ValueError, OSError):
            continue
        if running(pid):
            alive += [pid, *descendants(pid)]
    return alive


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def loopback_host(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8 or ::1): a node served on this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NodeProcesses:
    """The processes serving a loopback node on this machine, for the simulated meter: what the
    sessions of the SSH server listening on ``port`` run (sshd itself excluded) and the
    background servers named by the ``*.pid`` files under ``work_dir``. The listener is looked
    up once and again only when it has gone (the /proc/*/fd scan is the costly part)."""

    def __init__(self, port: int, work_dir: str | Path):
        self.port, self.work_dir = port, Path(work_dir)
        self.listener: int | None = None

    def __call__(self) -> list[int]:
        if self.listener is None or not Path(f"/proc/{self.listener}").exists():
            self.listener = listener_pid(self.port)
        sessions = session_pids(self.listener) if self.listener is not None else []
        return sorted(set(sessions) | set(pid_file_pids(self.work_dir)))

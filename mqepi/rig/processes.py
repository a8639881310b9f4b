"""The process tree of this machine, read from ``/proc``: which processes a command started.

The simulated meter charges a node's channel with the CPU time of that node's processes, and
a loopback node's processes are the descendants of its sessions' commands. Processes come and
go while the tree is read; one that ends mid-read is simply not in the answer.
"""

from __future__ import annotations

import os
from pathlib import Path


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

"""The process tree read from /proc: children and grandchildren found, ended processes absent."""

from __future__ import annotations

import os
import subprocess
import sys

from mqepi.rig.processes import descendants


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

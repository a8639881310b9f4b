"""An ingest run as a separate process by the lake commit tests (not a test module).

usage: ingest_proc.py LAKE BUNDLE [STALL_AFTER_FILES | cSTALL_AFTER_COMMITS]
  Ingests BUNDLE into LAKE and prints the outcome (INGESTED / REJECTED <first problem>).
  With STALL_AFTER_FILES = k, prints WROTE after the k-th data file is written and then
  sleeps, so the parent can kill the ingest half-way (files written, nothing committed).
  With cK, prints COMMITTED after the k-th table commit of the ingest's transaction and
  sleeps (killed between the commits of its tables).
"""

import sys
import time

from mqepi.community.ingest import ingest
from mqepi.community.problems import BundleRejected
from mqepi.lake import delta
from mqepi.lake.store import Lake

root, bundle = sys.argv[1], sys.argv[2]
lake = Lake(root)
if len(sys.argv) > 3 and sys.argv[3].startswith("c"):
    stall_after, commits = int(sys.argv[3][1:]), []
    commit = delta.commit

    def stalling_commit(*args, **kwargs):
        commit(*args, **kwargs)
        commits.append(1)
        if len(commits) == stall_after:
            print("COMMITTED", flush=True)
            time.sleep(60)

    delta.commit = stalling_commit
elif len(sys.argv) > 3:
    stall_after, written = int(sys.argv[3]), []
    write = lake._write_file

    def stalling_write(directory, name, table):
        out = write(directory, name, table)
        written.append(name)
        if len(written) == stall_after:
            print("WROTE", flush=True)
            time.sleep(60)
        return out

    lake._write_file = stalling_write
print("READY", flush=True)
sys.stdin.readline()  # the parent starts every ingest at once
try:
    result = ingest(bundle, lake)
    print("INGESTED", result.status, flush=True)
except BundleRejected as exc:
    print("REJECTED", exc.report.problems[0], flush=True)

"""A writer of an object-store lake run as a separate process by tests/test_lake_s3.py (not a
test module). The store comes from the inherited ``AWS_*`` environment.

usage: s3_writer_proc.py LAKE MODE ARG
  MODE=loop N     append N power-sample batches (5 rows each) whose content depends on the
                  batch number and on $WRITER_TAG (run id ``run-<tag>``); every 10th batch is
                  shared by all writers (run id ``shared``); prints DONE
  MODE=forever K  append power-sample batches of K rows (run id ``run-<tag>``, rows numbered
                  on from batch to batch) until killed, printing APPENDED after each
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import factories  # noqa: E402

from mqepi.lake.store import Lake  # noqa: E402

root, mode, arg = sys.argv[1], sys.argv[2], int(sys.argv[3])
lake = Lake(root)
tag = os.environ.get("WRITER_TAG", "w")

if mode == "loop":
    for i in range(arg):
        run_id = "shared" if i % 10 == 0 else f"run-{tag}"
        lake.append(factories.batch("power_sample", 5, start=i * 5, run_id=run_id))
    print("DONE", flush=True)
elif mode == "forever":
    print("READY", flush=True)
    i = 0
    while True:
        lake.append(factories.batch("power_sample", arg, start=i * arg, run_id=f"run-{tag}"))
        print("APPENDED", flush=True)
        i += 1
else:
    sys.exit(f"unknown mode {mode!r}")

"""A lake writer run as a separate process by the lake tests (not a test module).

usage: writer_proc.py LAKE MODE ARG
  MODE=loop N     append N power-sample batches (5 rows each) whose content depends on the
                  batch number and on $WRITER_TAG; every 10th batch is shared by all writers
  MODE=pause S    append batches forever, printing PUBLISH and sleeping S seconds between
                  writing a temporary file and publishing it (the parent kills us there)
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import factories  # noqa: E402

from mqepi.lake.store import Lake  # noqa: E402

root, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
lake = Lake(root)
tag = os.environ.get("WRITER_TAG", "w")

if mode == "loop":
    for i in range(int(arg)):
        shared = i % 10 == 0
        run_id = "shared" if shared else f"run-{tag}"
        lake.append(factories.batch("power_sample", 5, start=i * 5, run_id=run_id))
    print("DONE", flush=True)
elif mode == "pause":
    publish = lake._publish

    def slow_publish(temp, final):
        print("PUBLISH", flush=True)
        time.sleep(float(arg))
        return publish(temp, final)

    lake._publish = slow_publish
    i = 0
    while True:
        lake.append(factories.batch("benchmark_answer", 50, start=i * 50, run_id=f"run-{i % 3}"))
        i += 1

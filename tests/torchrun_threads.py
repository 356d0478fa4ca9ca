"""Run under torchrun by tests/test_demo.py: the demo's rank side, then the native threads this
rank still has. After the demo's teardown none of gloo's may be left (they would outlive the
process group into interpreter exit and abort the rank)."""
import glob
import os
import sys

from moe_lab.__main__ import main

code = main(["demo", *sys.argv[1:]])
names = []
for task in glob.glob("/proc/self/task/*/comm"):
    try:
        names.append(open(task).read().strip())
    except OSError:  # a thread that just ended
        pass
print(f"rank {os.environ['RANK']} threads after the demo: {sorted(names)}", file=sys.stderr, flush=True)
sys.exit(code)

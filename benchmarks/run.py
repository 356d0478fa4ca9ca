"""Run the benchmark suite from a checkout: `python benchmarks/run.py [--quick] [--sections ...]`.

The same as `python -m moe_lab bench`; the suite itself lives in moe_lab/bench_suite.py so that
the ranks can import its functions. Results go to benchmarks/results/ unless --out says otherwise.
"""
import sys
from pathlib import Path

if __name__ == "__main__":  # ranks start with forkserver: nothing may run on import
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from moe_lab.bench import main

    sys.exit(main())

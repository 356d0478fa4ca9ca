"""Run the benchmark suite from a checkout: `python benchmarks/run.py [--quick] [--sections ...]`.

The same as `python -m moe_lab bench`. The benchmarks are not part of the installed package: they
live beside it, and the ranks import their functions as `benchmarks.<module>` from the checkout.
Results go to benchmarks/results/ unless --out says otherwise.
"""
import sys
from pathlib import Path

if __name__ == "__main__":  # ranks start with forkserver: nothing may run on import
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import main

    sys.exit(main())

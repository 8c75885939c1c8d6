"""The 8-process target alone: raw and sqlite taking turns, larger units of work, the median.

    python bench/contention_rounds.py [--rounds 5] [--procs 8] [--registers 200] [--increments 100]

The same rounds ``bench/run.py`` runs for its 8-process target (``run.contention_rounds``),
without the rest of the run. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import contention_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--registers", type=int, default=200)
    parser.add_argument("--increments", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccr-rounds-") as scratch:
        result = contention_rounds(
            args.procs, Path(scratch), args.rounds, args.registers, args.increments
        )
    ratios = result["ratios"]
    print(
        f"{args.procs} processes x ({args.registers} registers + {args.increments} increments), "
        f"{args.rounds} rounds: median ratio {result['median_ratio']:.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()

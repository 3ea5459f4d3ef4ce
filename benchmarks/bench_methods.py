"""Compare cell methods on generated chips with ground truth; print accuracy and throughput.

    python benchmarks/bench_methods.py --size-um 600 --seeds 0 1 --methods expansion ucs
    python benchmarks/bench_methods.py --methods membrane --membrane-shift 7 -5

The harness is ``stseg bench -- --methods`` (stseg_dist/bench/comparison.py); this script runs it on
generated chips only unless ``--real`` is given. Every option of that command applies.
"""

from __future__ import annotations

import sys

from stseg_dist.bench.comparison import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--real" or a.startswith("--real=") for a in argv):
        argv = [*argv, "--real", ""]
    if "--methods" not in argv:
        argv = ["--methods", "expansion", "ucs", *argv]
    raise SystemExit(main(argv))

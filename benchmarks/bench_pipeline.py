"""Throughput and memory of the whole pipeline on generated chips of growing size.

    python benchmarks/bench_pipeline.py --sizes-um 1000 3000 --workers 1 2 [--json out.json]

A thin wrapper around ``stseg_dist.bench`` (``bench/pipeline.py``) (also ``stseg bench``); see its
docstring.
"""

from stseg_dist.bench import main

if __name__ == "__main__":
    raise SystemExit(main())

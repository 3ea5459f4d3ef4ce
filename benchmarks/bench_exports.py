"""Time and peak memory of the run exports (SpatialData, Xenium Explorer) on one finished run.

Each export runs in its own process, so its peak RSS is its own. Without --run, a chip of
--size-um is generated and segmented first (expansion, in-process).
Usage: .venv/bin/python benchmarks/bench_exports.py --size-um 1500 --dir /tmp/bench_exports
       .venv/bin/python benchmarks/bench_exports.py --run RUN --chip CHIP
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _child(code: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``python -c code`` (the child reports its own peak)."""
    code += "\nimport resource; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    kb = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    return seconds, kb / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run folder (default: generate one)")
    ap.add_argument("--chip", help="its chip (default: the one in run.json)")
    ap.add_argument("--size-um", type=float, default=1000.0, help="generated chip side")
    ap.add_argument("--dir", default="/tmp/bench_exports", help="scratch folder for a generated run")
    args = ap.parse_args(argv)
    if args.run:
        run, chip = Path(args.run), args.chip
    else:
        d = Path(args.dir)
        shutil.rmtree(d, ignore_errors=True)
        chip, run = str(d / "chip"), d / "run"
        _child(f"from stseg_dist.synth import synth_chip; synth_chip({chip!r}, {args.size_um}, {args.size_um}, 1)")
        _child("from stseg_dist.driver import run_pipeline; from stseg_dist.config import load_config, parse_set; "
               f"run_pipeline({chip!r}, {str(run)!r}, load_config(overrides=parse_set(['runtime.progress=false'])), "
               "local=True)")
    info = json.loads((run / "run.json").read_text())
    print(f"run {run}: {info['counts']['n_cells']} cells, {info['counts']['n_transcripts']} transcripts, "
          f"grid {info['grid']['shape']} px")
    for fmt in ("spatialdata", "xenium-explorer"):
        out = run / f"bench-{fmt}"
        seconds, rss = _child(f"from stseg_dist.export import export_run; export_run({str(run)!r}, {fmt!r}, "
                              f"out={str(out)!r}, chip={chip!r})")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        print(f"{fmt}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, {size:.0f} MiB written")
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

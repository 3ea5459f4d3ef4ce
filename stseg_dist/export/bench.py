"""``stseg bench -- --exports``: time and peak memory of the run exports on one finished run.

    stseg bench -- --exports [--size-um 1500] [--run RUN --chip CHIP] [--json out.json]

Each export (SpatialData, Xenium Explorer) runs in its own process, so its peak RSS is its own.
Without --run, a chip of --size-um is generated and segmented first (expansion, in-process).
Figures are printed (and written as JSON); nothing asserts them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _child(code: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``python -c code`` (the child reports its own peak)."""
    code += (
        "\nimport resource; "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    kb = next(
        int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")
    )
    return seconds, kb / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="stseg bench -- --exports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--run", help="a finished run folder (default: generate one)")
    ap.add_argument("--chip", help="its chip (default: the one in run.json)")
    ap.add_argument("--size-um", type=float, default=1000.0, help="generated chip side")
    ap.add_argument(
        "--dir", default="/tmp/bench_exports", help="scratch folder for a generated run"
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.run:
        run, chip = Path(args.run), args.chip
    else:
        d = Path(args.dir)
        shutil.rmtree(d, ignore_errors=True)
        chip, run = str(d / "chip"), d / "run"
        _child(
            f"from stseg_dist.synth import synth_chip; synth_chip({chip!r}, {args.size_um}, "
            f"{args.size_um}, 1)"
        )
        _child(
            "from stseg_dist.driver import run_pipeline; from stseg_dist.config import "
            "load_config, parse_set; "
            f"run_pipeline({chip!r}, {str(run)!r}, "
            "load_config(overrides=parse_set(['runtime.progress=false'])), "
            "local=True)"
        )
    info = json.loads((run / "run.json").read_text())
    rows = []
    print(
        f"run {run}: {info['counts']['n_cells']} cells, {info['counts']['n_transcripts']} "
        "transcripts, "
        f"grid {info['grid']['shape']} px"
    )
    for fmt in ("spatialdata", "xenium-explorer"):
        out = run / f"bench-{fmt}"
        seconds, rss = _child(
            f"from stseg_dist.export import export_run; export_run({str(run)!r}, {fmt!r}, "
            f"out={str(out)!r}, chip={chip!r})"
        )
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        print(f"{fmt}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, {size:.0f} MiB written", flush=True)
        rows.append(
            {
                "format": fmt,
                "seconds": seconds,
                "peak_rss_mib": rss,
                "written_mib": size,
                "n_cells": info["counts"]["n_cells"],
                "n_transcripts": info["counts"]["n_transcripts"],
            }
        )
        shutil.rmtree(out)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput and memory of the whole pipeline on generated chips of growing size.

    python benchmarks/bench_pipeline.py --sizes-um 1000 3000 --workers 1 2 [--json out.json]

For each chip: wall seconds per stage, transcripts/s and cells/s, peak RSS of the driver and of
the largest Ray worker (sampled), and the ratio of the Ray run to the single-process run of the
same kernels. ``--workers`` repeats the Ray run with that many worker CPUs (a scaling curve).
Figures are printed and written as JSON; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from stseg_dist.synth import synth_chip


class WorkerRSS:
    """Samples the RSS of Ray worker processes (children of this driver's raylet) every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                if "ray::" in (proc.info.get("name") or "") or "default_worker.py" in cmd:
                    mem = proc.info.get("memory_info")
                    if mem:
                        self.peak = max(self.peak, mem.rss)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_once(chip, out, cfg, local, workers=None):
    import ray

    if not local:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        with WorkerRSS() as rss:
            t0 = time.perf_counter()
            summary = run_pipeline(chip, out, cfg, local=local)
            secs = time.perf_counter() - t0
    finally:
        if not local:
            ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    c = summary["counts"]
    return {"seconds": secs, "transcripts_per_s": c["n_transcripts"] / secs, "cells_per_s": c["n_cells"] / secs,
            "stage_seconds": summary["stage_seconds"], "n_tiles": summary["n_tiles"],
            "worker_peak_rss_mb": rss.peak / 2**20, "n_transcripts": c["n_transcripts"], "n_cells": c["n_cells"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-um", type=float, nargs="+", default=[1000, 3000])
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1])
    p.add_argument("--method", default="expansion")
    p.add_argument("--tile-um", type=float, default=500)
    p.add_argument("--no-local", action="store_true", help="skip the single-process comparison")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load_config(overrides=parse_set([f"cells.method={args.method}", f"tiling.tile_size_um={args.tile_um}",
                                           "runtime.progress=false"]), use_env=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes_um:
            chip = str(Path(tmp) / "chip")
            info = synth_chip(chip, size, size, seed=1, overwrite=True)
            print(f"chip {size:.0f} x {size:.0f} µm: {info['n_transcripts']:,} transcripts, {info['n_cells']:,} cells "
                  f"(synth {info['seconds']:.1f} s, peak RSS {info['peak_rss_mb']:.0f} MB)", flush=True)
            local = None if args.no_local else run_once(chip, str(Path(tmp) / "out"), cfg, local=True)
            for w in args.workers:
                r = run_once(chip, str(Path(tmp) / "out"), cfg, local=False, workers=w)
                r.update(size_um=size, workers=w, driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                if local:
                    r["ray_over_single_process"] = r["seconds"] / local["seconds"]
                    r["single_process_seconds"] = local["seconds"]
                rows.append(r)
                st = " ".join(f"{k}={v:.1f}" for k, v in r["stage_seconds"].items())
                ratio = f", ray/single {r['ray_over_single_process']:.2f}" if local else ""
                print(f"  workers={w}: {r['seconds']:.1f} s, {r['transcripts_per_s']:,.0f} transcripts/s, "
                      f"{r['cells_per_s']:,.0f} cells/s, {r['n_tiles']} tiles, driver peak {r['driver_peak_rss_mb']:.0f} MB, "
                      f"largest worker {r['worker_peak_rss_mb']:.0f} MB{ratio}\n    stages: {st}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``stseg bench``: throughput and memory of the whole pipeline on generated chips.

    stseg bench -- --sizes-um 1000 3000 [--workers 1 2 4] [--method ucs] [--json out.json]
    stseg bench -- --methods expansion ucs ...   (accuracy and throughput side by side: bench/comparison.py)
    stseg bench -- --exports [--size-um 1500]    (SpatialData / Xenium Explorer export time and memory)

For each chip size: wall seconds per stage, transcripts/s and cells/s, peak RSS of the driver
and of the largest Ray worker (sampled with psutil in a background thread), and the ratio of the
Ray run to the single-process run (``run_pipeline(..., local=True)``) of the same kernels.
Several ``--workers`` values give a scaling curve. Chips are generated block by block, so sizes
up to tens of millions of transcripts are streamed. Figures are printed and written as JSON;
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


class RSSSampler:
    """Peak RSS of this process and of the largest Ray worker, sampled every ``interval`` s.

    ``resource.ru_maxrss`` would include chip generation in the driver's figure; sampling
    during the run alone measures the run.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.driver_peak = 0
        self.worker_peak = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        self.driver_peak = max(self.driver_peak, self._me.memory_info().rss)
        for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
            try:
                name = proc.info.get("name") or ""
                cmd = " ".join(proc.info.get("cmdline") or [])
                if name.startswith("ray::") or "default_worker.py" in cmd:
                    mem = proc.info.get("memory_info")
                    if mem:
                        self.worker_peak = max(self.worker_peak, mem.rss)
            except (psutil.Error, TypeError):
                continue

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def run_once(chip: str, out: str, config, *, local: bool, workers: int | None = None) -> dict:
    """One timed pipeline run; Ray is started with ``workers`` CPUs unless ``local``."""
    from ..driver import run_pipeline

    if not local:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        with RSSSampler() as rss:
            t0 = time.perf_counter()
            summary = run_pipeline(chip, out, config, local=local)
            secs = time.perf_counter() - t0
    finally:
        if not local:
            import ray

            ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    c = summary["counts"]
    return {
        "mode": "single_process" if local else "ray",
        "workers": 1 if local else workers,
        "seconds": secs,
        "transcripts_per_s": c["n_transcripts"] / secs,
        "cells_per_s": c["n_cells"] / secs,
        "stage_seconds": summary["stage_seconds"],
        "n_tiles": summary["n_tiles"],
        "n_transcripts": c["n_transcripts"],
        "n_cells": c["n_cells"],
        "driver_peak_rss_mb": rss.driver_peak / 2**20,
        "worker_peak_rss_mb": rss.worker_peak / 2**20,
    }


def run_bench(
    sizes_um=(1000.0,),
    workers=(None,),
    *,
    method: str = "expansion",
    tile_um: float = 500.0,
    local: bool = True,
    workdir: str | None = None,
    seed: int = 1,
    echo=print,
) -> list[dict]:
    """Generate a chip per size, run it single-process and on Ray per worker count; return rows.

    Each Ray row carries ``ray_over_single_process`` (Ray seconds / single-process seconds) when
    ``local``. ``echo`` receives one human-readable line per run.
    """
    from ..config import load_config, parse_set
    from ..synth import synth_chip

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load_config(
        overrides=parse_set(
            [f"cells.method={method}", f"tiling.tile_size_um={tile_um}", "runtime.progress=false"]
        ),
        use_env=False,
    )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for size in sizes_um:
            chip, out = str(Path(tmp) / "chip"), str(Path(tmp) / "out")
            info = synth_chip(chip, size, size, seed=seed, overwrite=True)
            echo(
                f"chip {size:.0f} x {size:.0f} µm: {info['n_transcripts']:,} transcripts, {info['n_cells']:,} cells "
                f"(generated in {info['seconds']:.1f} s)"
            )
            single = run_once(chip, out, cfg, local=True) if local else None
            runs = ([single] if single else []) + [
                run_once(chip, out, cfg, local=False, workers=w) for w in workers
            ]
            for r in runs:
                r["size_um"] = size
                if single and r["mode"] == "ray":
                    r["ray_over_single_process"] = r["seconds"] / single["seconds"]
                rows.append(r)
                echo(format_row(r))
    return rows


def format_row(r: dict) -> str:
    """One line per run plus its stage seconds."""
    ratio = (
        f", ray/single {r['ray_over_single_process']:.2f}" if "ray_over_single_process" in r else ""
    )
    st = " ".join(f"{k}={v:.2f}" for k, v in r["stage_seconds"].items())
    return (
        f"  {r['mode']:<14} workers={r['workers']}: {r['seconds']:.1f} s, {r['transcripts_per_s']:,.0f} "
        f"transcripts/s, {r['cells_per_s']:,.0f} cells/s, {r['n_tiles']} tiles, driver peak "
        f"{r['driver_peak_rss_mb']:.0f} MB, largest worker {r['worker_peak_rss_mb']:.0f} MB{ratio}\n"
        f"    stages: {st}"
    )


def main(argv=None) -> int:
    """Command-line entry for ``stseg bench`` and ``benchmarks/bench_pipeline.py``."""
    argv = [a for a in (argv or []) if a != "--"] if argv is not None else None
    if "--methods" in (argv if argv is not None else sys.argv[1:]):
        from .comparison import main as compare_main

        return compare_main(argv)
    if "--exports" in (argv if argv is not None else sys.argv[1:]):
        from ..export.bench import main as exports_main

        return exports_main(
            [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--exports"]
        )
    p = argparse.ArgumentParser(
        prog="stseg bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes-um", type=float, nargs="+", default=[1000.0, 3000.0])
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[os.cpu_count() or 1],
        help="Ray worker CPUs; several values give a scaling curve",
    )
    p.add_argument("--method", default="expansion")
    p.add_argument("--tile-um", type=float, default=500.0)
    p.add_argument("--no-local", action="store_true", help="skip the single-process comparison")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args(argv)
    rows = run_bench(
        args.sizes_um,
        args.workers,
        method=args.method,
        tile_um=args.tile_um,
        local=not args.no_local,
        echo=lambda s: print(s, flush=True),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0

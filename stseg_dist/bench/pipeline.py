"""``stseg bench``: throughput and memory of the whole pipeline on generated chips.

    stseg bench -- --sizes-um 1000 3000 [--workers 1 2 4] [--method ucs] [--json out.json]
    stseg bench -- --chip SLIDE [--config configs/xenium.yaml] [--set k=v] [--no-local]
    stseg bench -- --methods expansion ucs ...   (accuracy and throughput side by side:
                                                  bench/comparison.py)
    stseg bench -- --exports [--size-um 1500]    (SpatialData / Xenium Explorer export time and
                                                  memory)

For each chip size (or ``--chip``, e.g. a slide from ``stseg synth --from``): wall seconds per
stage, with the outputs split into boundaries, tables, AnnData, publish, the SpatialData store
and the report, and their share of the run; transcripts/s and cells/s; peak RSS per process
(the driver, each Ray worker, Ray's raylet/GCS: psutil samples of the driver and its descendant
processes every 0.2 s, so other engineers' Ray clusters are not counted); and the ratio of the
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

#: Stage names in run.json's ``stage_seconds`` that are the run's outputs, and the bench's own
#: ``report``: the split the benchmark prints.
OUTPUT_PARTS = {
    "boundaries": "boundaries",
    "tables": "outputs.tables",
    "anndata": "outputs.anndata",
    "publish": "outputs.publish",
    "spatialdata": "spatialdata",
    "report": "report",
}


#: Ray's own helper processes, named like workers.
RAY_HELPERS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE_SPILL_WORKER")


class RSSSampler:
    """Peak RSS per process of this run: the driver and every process it started (Ray's raylet,
    GCS and workers), sampled every ``interval`` s with psutil.

    Only this process's descendants are counted, so other Ray clusters on a shared machine are
    not. ``resource.ru_maxrss`` would include chip generation in the driver's figure; sampling
    during the run alone measures the run. A spike shorter than ``interval`` can be missed.
    ``total_peak`` is the largest sum over all of them at one sample.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peaks: dict[int, dict] = {}
        self.total_peak = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(name: str, cmd: str) -> str:
        """Worker (a Ray worker: ``ray::<task>``, or ``python default_worker.py`` before it
        names itself) or ray (the raylet, GCS, dashboard and runtime-env agents: the raylet's
        command line names default_worker.py too, as an argument).
        """
        if name in RAY_HELPERS or name.startswith(("raylet", "gcs_server")):
            return "ray"
        if name.startswith("ray::") or any(
            part.endswith("default_worker.py") for part in cmd.split()[:2]
        ):
            return "worker"
        return "ray"

    def _sample(self):
        total = 0
        procs = [self._me]
        try:
            procs += self._me.children(recursive=True)
        except psutil.Error:
            pass
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                entry = self.peaks.get(proc.pid)
                if entry is None:
                    if proc.pid == self._me.pid:
                        kind, name = "driver", "driver"
                    else:
                        name = proc.name()
                        kind = self.kind(name, " ".join(proc.cmdline()))
                    entry = self.peaks[proc.pid] = {"pid": proc.pid, "kind": kind, "peak": 0}
                    entry["name"] = name
                if entry["kind"] == "worker":  # a worker renames itself after the task it runs
                    try:
                        name = proc.name()
                        if name.startswith("ray::") and name != "ray::IDLE":
                            entry["name"] = name
                    except psutil.Error:
                        pass
                entry["peak"] = max(entry["peak"], rss)
                total += rss
            except (psutil.Error, OSError):
                continue
        self.total_peak = max(self.total_peak, total)

    @property
    def driver_peak(self) -> int:
        return max((e["peak"] for e in self.peaks.values() if e["kind"] == "driver"), default=0)

    @property
    def worker_peak(self) -> int:
        return max((e["peak"] for e in self.peaks.values() if e["kind"] == "worker"), default=0)

    def per_process(self) -> list[dict]:
        """Every process seen, largest peak first: pid, kind, name and peak RSS in MiB."""
        rows = [
            {
                "pid": e["pid"],
                "kind": e["kind"],
                "name": e["name"],
                "peak_rss_mb": e["peak"] / 2**20,
            }
            for e in self.peaks.values()
        ]
        return sorted(rows, key=lambda r: -r["peak_rss_mb"])

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


def run_once(
    chip: str,
    out: str,
    config,
    *,
    local: bool,
    workers: int | None = None,
    spatialdata: bool = True,
    report: bool = True,
    keep: bool = False,
) -> dict:
    """One timed pipeline run (SpatialData store included unless ``spatialdata`` is False), then
    the report (timed as the stage ``report``); Ray is started with ``workers`` CPUs unless
    ``local``. ``keep`` leaves the run folder in place (for scoring it afterwards).
    """
    from ..driver import run_pipeline
    from ..report import write_report

    if spatialdata:
        import importlib.util

        spatialdata = importlib.util.find_spec("spatialdata") is not None
    if not local:
        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    try:
        with RSSSampler() as rss:
            t0 = time.perf_counter()
            summary = run_pipeline(chip, out, config, local=local, spatialdata=spatialdata)
            t_report = time.perf_counter()
            if report:
                write_report(out)
            secs = time.perf_counter() - t0
            t_report = time.perf_counter() - t_report
    finally:
        if not local:
            import ray

            ray.shutdown()
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    c = summary["counts"]
    stage_seconds = dict(summary["stage_seconds"])
    if report:
        stage_seconds["report"] = t_report
    outputs = {k: stage_seconds[v] for k, v in OUTPUT_PARTS.items() if v in stage_seconds}
    # "outputs" holds tables, AnnData and publish; boundaries and the store are stages of their own
    outputs_total = (
        stage_seconds.get("outputs", 0.0)
        + outputs.get("boundaries", 0.0)
        + outputs.get("spatialdata", 0.0)
    )
    outputs_total += outputs.get("report", 0.0)
    return {
        "mode": "single_process" if local else "ray",
        "workers": 1 if local else workers,
        "seconds": secs,
        "transcripts_per_s": c["n_transcripts"] / secs,
        "cells_per_s": c["n_cells"] / secs,
        "stage_seconds": stage_seconds,
        "outputs_seconds": outputs,
        "outputs_share": outputs_total / secs if secs > 0 else float("nan"),
        "n_tiles": summary["n_tiles"],
        "n_transcripts": c["n_transcripts"],
        "n_cells": c["n_cells"],
        "driver_peak_rss_mb": rss.driver_peak / 2**20,
        "worker_peak_rss_mb": rss.worker_peak / 2**20,
        "all_processes_peak_rss_mb": rss.total_peak / 2**20,
        "processes": rss.per_process(),
        "rss_measured": "psutil RSS of the driver and its descendant processes every "
        f"{rss.interval} s",
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
    chip: str | None = None,
    config: str | None = None,
    sets: list[str] | None = None,
    spatialdata: bool = True,
    report: bool = True,
    keep: str | None = None,
    echo=print,
) -> list[dict]:
    """Generate a chip per size (or take ``chip``), run it single-process and on Ray per worker
    count; return rows.

    Each Ray row carries ``ray_over_single_process`` (Ray seconds / single-process seconds) when
    ``local``. ``config`` (a YAML file) and ``sets`` (``key=value``) apply over the bench's
    method and tile size. ``keep`` keeps the last run's folder there. ``echo`` receives one
    human-readable line per run.
    """
    from ..config import load_config, parse_set
    from ..synth import synth_chip

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    base = [f"cells.method={method}", f"tiling.tile_size_um={tile_um}", "runtime.progress=false"]
    cfg = load_config(config, overrides=parse_set(base + list(sets or [])), use_env=False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for size in [None] if chip else sizes_um:
            out = keep or str(Path(tmp) / "out")
            if chip:
                the_chip = chip
                echo(f"chip {chip}")
            else:
                the_chip = str(Path(tmp) / "chip")
                info = synth_chip(the_chip, size, size, seed=seed, overwrite=True)
                echo(
                    f"chip {size:.0f} x {size:.0f} µm: {info['n_transcripts']:,} transcripts, "
                    f"{info['n_cells']:,} cells "
                    f"(generated in {info['seconds']:.1f} s)"
                )
            how = {"spatialdata": spatialdata, "report": report, "keep": bool(keep)}
            single = run_once(the_chip, out, cfg, local=True, **how) if local else None
            runs = ([single] if single else []) + [
                run_once(the_chip, out, cfg, local=False, workers=w, **how) for w in workers
            ]
            for r in runs:
                r["size_um"] = size
                r["chip"] = chip
                if single and r["mode"] == "ray":
                    r["ray_over_single_process"] = r["seconds"] / single["seconds"]
                rows.append(r)
                echo(format_row(r))
    return rows


def format_row(r: dict) -> str:
    """One line per run, its stage seconds, the outputs' split and share, and memory per process."""
    ratio = (
        f", ray/single {r['ray_over_single_process']:.2f}" if "ray_over_single_process" in r else ""
    )
    st = " ".join(f"{k}={v:.2f}" for k, v in r["stage_seconds"].items())
    outs = " ".join(f"{k}={v:.2f}" for k, v in r["outputs_seconds"].items())
    procs = ", ".join(
        f"{p['kind']} {p['name']} {p['peak_rss_mb']:.0f}"
        for p in r["processes"]
        if p["kind"] != "ray" or p["peak_rss_mb"] >= 50
    )
    return (
        f"  {r['mode']:<14} workers={r['workers']}: {r['seconds']:.1f} s, "
        f"{r['transcripts_per_s']:,.0f} "
        f"transcripts/s, {r['cells_per_s']:,.0f} cells/s, {r['n_tiles']} tiles, driver peak "
        f"{r['driver_peak_rss_mb']:.0f} MB, largest worker {r['worker_peak_rss_mb']:.0f} MB, all "
        f"processes {r['all_processes_peak_rss_mb']:.0f} MB{ratio}\n"
        f"    stages: {st}\n"
        f"    outputs: {outs} (share of the run: {r['outputs_share']:.1%})\n"
        f"    peak RSS per process (MB): {procs}"
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
    p.add_argument("--chip", help="benchmark this chip (e.g. from stseg synth --from) instead")
    p.add_argument("--config", help="a config file (under the bench's method and tile size)")
    p.add_argument("--set", action="append", default=[], help="config key=value (repeatable)")
    p.add_argument(
        "--no-spatialdata", action="store_true", help="do not write the SpatialData store"
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--keep", help="keep the (last) run's output folder here")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args(argv)
    rows = run_bench(
        args.sizes_um,
        args.workers,
        method=args.method,
        tile_um=args.tile_um,
        local=not args.no_local,
        chip=args.chip,
        config=args.config,
        sets=args.set,
        spatialdata=not args.no_spatialdata,
        report=not args.no_report,
        keep=args.keep,
        echo=lambda s: print(s, flush=True),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0

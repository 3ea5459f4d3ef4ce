"""The driver: scan, nuclei, global IDs, (training), (seeds), cells, reduce, publish.

It holds only URLs, per-tile summaries and the cell table; tiles read their own slices.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import logging
import math
import time
from typing import Any

import numpy as np

from . import constants as K
from . import redact, runlock, stages
from .boundaries import write_boundaries
from .config import PipelineConfig, StageResources as ResCfg
from .errors import InputError, OutputError, RunIncompleteError
from .executor import LocalExecutor, Outcome, RayExecutor, StageResources, init_ray
from .io import storage
from .io.chip import Chip, open_chip
from .methods import CellMethod, PrepareContext, get_method
from .nuclei import get_backend
from .nuclei.classical import otsu_from_histogram
from .outputs import (
    cells_table,
    concat_transcripts,
    create_labels,
    publish,
    reduce_cells,
    write_h5ad,
    write_parquet,
)
from .scan import batch_row_groups, merge_scan, scan_row_groups
from .statefile import StateFileError
from .stitching import assign_global_ids
from .tiling import make_grid
from .workdir import WorkDir, run_key

log = logging.getLogger(__name__)

VERSIONED = ("stseg-dist", "ray", "numpy", "zarr", "pyarrow", "anndata", "scikit-image", "torch", "cellpose")


# -- kernels as module-level functions (picklable by reference) ------------------------------
def _scan(shared, _worker, groups):
    chip, tol = shared
    return scan_row_groups(chip.transcripts, groups, chip.extent_um(), tol)


def _hist(shared, _worker, tile):
    ctx, vmax = shared
    return stages.histogram_tile(ctx, tile, vmax)


def _make_backend(ctx):
    backend = get_backend(ctx.config.nuclei.backend, ctx.config, ctx.chip)
    backend.prepare(ctx.nuclei_stats)
    if backend.uses_model:
        backend.load()
    return backend


def _nuclei(ctx, backend, tile):
    return stages.nuclei_tile(ctx, backend, tile)


def _make_method(ctx):
    method = get_method(ctx.config.cells.method, ctx.config, ctx.chip.meta.platform)
    method.load(ctx.method_state)
    return method


def _seeds(ctx, method, tile):
    return stages.seeds_tile(ctx, method, tile)


def _cells(ctx, method, tile):
    return stages.cells_tile(ctx, method, tile)


def _apply(ctx, _worker, job):
    fn, index = job
    data, _ = stages.tile_data(ctx, ctx.grid[index])
    return fn(data)


# -- helpers ---------------------------------------------------------------------------------
def _resources(cfg: ResCfg, n_actors: int = 1, num_gpus: float | None = None) -> StageResources:
    return StageResources(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus if num_gpus is None else num_gpus,
        memory_bytes=int(cfg.memory_gb * 2**30) if cfg.memory_gb else None,
        n_actors=n_actors,
    )


def _check_output(out_url: str, so: dict) -> None:
    """Refuse an OUT that is a file or cannot be written, before anything is computed."""
    fs, path = storage.fs_and_path(out_url, so)
    if fs.exists(path) and not fs.isdir(path):
        raise OutputError(f"output {out_url} exists and is a file, not a folder")
    try:
        fs.makedirs(path, exist_ok=True)
        probe = storage.join(out_url, K.WORK_DIR, ".write-probe")
        storage.write_bytes_atomic(probe, b"ok", so)
        storage.remove(probe, so)
    except (OSError, PermissionError) as exc:
        raise OutputError(f"output {out_url} is not writable: {exc}") from exc


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _errors(outcomes: list[Outcome], stage: str) -> list[dict]:
    return [
        {"stage": stage, "tile": o.item.index if hasattr(o.item, "index") else None,
         "error": f"{type(o.error).__name__}: {o.error}"}
        for o in outcomes if o.error is not None
    ]


def _halo_um(config: PipelineConfig, method: CellMethod, nuclei_um: float) -> float:
    """The halo: cells reach their nuclei, and the nuclei backend's own context (``nuclei_um``,
    e.g. what makes classical nuclei exact) is inside every window."""
    if config.tiling.halo_um is not None:
        return float(config.tiling.halo_um)
    need = 2.0 * method.reach_um() + 2.0 * config.nuclei.diameter_um
    return max(config.halo_um(), need, nuclei_um)


# -- the pipeline ----------------------------------------------------------------------------
def run_pipeline(
    chip_url: str | Chip,
    out_url: str,
    config: PipelineConfig | None = None,
    *,
    address: str | None = None,
    storage_options: dict | None = None,
    local: bool = False,
    resume: bool = True,
) -> dict[str, Any]:
    """Segment a whole chip and write the outputs to ``out_url``; return the run summary.

    ``local=True`` runs the same kernels in this process without Ray (the reference for tests
    and the single-process benchmark). A run whose tiles all finished has status "complete";
    otherwise outputs are still written, status is "incomplete" and RunIncompleteError is raised.
    """
    config = config or PipelineConfig()
    so = dict(storage_options or {})
    redact.register(config.to_dict(), {"storage_options": so})  # masked in logs and messages
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    chip = chip_url if isinstance(chip_url, Chip) else open_chip(chip_url, so)
    method = get_method(config.cells.method, config, chip.meta.platform)
    backend = get_backend(config.nuclei.backend, config, chip)  # validates the name and its inputs early
    _check_output(out_url, so)

    with runlock.hold(out_url, so):  # one run at a time per OUT: a second one refuses, naming the lock
        grid = make_grid(chip.shape_yx, chip.pixel_size_um, config.tiling.tile_size_um,
                         _halo_um(config, method, backend.context_px() * chip.pixel_size_um),
                         config.tiling.chunk_px)

        started_ray = False
        if local:
            ex: Any = LocalExecutor(progress=False, fail_fast=config.runtime.fail_fast)
        else:
            started_ray = init_ray(address)
            ex = RayExecutor(config.runtime.max_in_flight, config.runtime.max_retries,
                             config.runtime.progress, config.runtime.fail_fast)
        try:
            summary = _run(chip, out_url, config, so, method, grid, ex, times, resume)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        summary["started"] = started
        summary["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
        times["total"] = time.perf_counter() - t_all
        summary["stage_seconds"] = times
        summary = redact.redact(summary)  # no credential in run.json (storage options, URLs, errors)
        storage.write_json_atomic(storage.join(out_url, K.RUN_JSON), summary, so)
        if summary["status"] != "complete":
            raise RunIncompleteError(
                f"{len(summary['failed'])} tile(s) failed; outputs in {redact.scrub(out_url)} are incomplete "
                f"(see {K.RUN_JSON}); re-run the same command to redo only those tiles"
            )
    return summary


def _run(chip, out_url, config, so, method, grid, ex, times, resume) -> dict:
    failed: list[dict] = []

    # 1. scan: validate every transcript and build the gene vocabulary (writes nothing).
    t = time.perf_counter()
    tol = chip.pixel_size_um
    scan = ex.map(_scan, (chip, tol), batch_row_groups(chip.transcripts.row_groups), desc="scan",
                  resources=_resources(config.resources.scan))
    for o in scan:
        if o.error is not None:
            raise o.error
    result = merge_scan([o.result for o in scan], chip.transcripts)
    if result.n_rows == 0:
        raise InputError(f"{chip.transcripts_url}: the chip has no transcripts (empty table)")
    genes = result.genes
    warnings: list[str] = []
    missing, total = chip.missing_image_chunks()
    if missing:
        warnings.append(f"{chip.image.url}: {missing} of {total} image chunks are not stored and read as "
                         "the fill value (zarr semantics); segmentation sees no stain there")
        log.warning(warnings[-1])
    times["scan"] = time.perf_counter() - t

    key = run_key(chip.meta.to_json(), chip.url, result.n_rows, redact.redact(config.to_dict()))
    work = WorkDir(out_url, key, so)
    if not resume:
        storage.remove(work.root, so)
    work.save_json("manifest.json", redact.redact({"chip": chip.url, "config": config.to_dict(),
                                                   "n_tiles": len(grid)}))
    ctx = stages.RunContext(chip, config, grid, work, genes)

    # 2. chip-wide nuclear-stain threshold (classical backend only).
    if config.nuclei.backend == "classical" and config.nuclei.classical.threshold is None:
        t = time.perf_counter()
        stats = work.load_json("nuclei_stats.json")
        if stats is None:
            dtype = np.dtype(chip._image_array().dtype)
            vmax = float(np.iinfo(dtype).max) if dtype.kind in "ui" else _float_max(ex, ctx)
            hists = ex.map(_hist, (ctx, vmax), list(grid), desc="histogram",
                           resources=_resources(config.resources.nuclei))
            for o in hists:
                if o.error is not None:
                    raise o.error
            total = np.sum([o.result for o in hists], axis=0)
            stats = {"threshold": otsu_from_histogram(total, vmax)}
            work.save_json("nuclei_stats.json", stats)
        ctx.nuclei_stats = stats
        times["threshold"] = time.perf_counter() - t

    # 3. nuclei per tile, owned by centroid; finished tiles are skipped on resume.
    t = time.perf_counter()
    backend_probe = get_backend(config.nuclei.backend, config, chip)
    todo = [tl for tl in grid if tl.index not in work.done(stages.NUCLEI)]
    resumed = {"nuclei": len(grid) - len(todo)}
    if backend_probe.uses_model:
        cp = config.nuclei.cellpose
        res = _resources(config.resources.nuclei, cp.num_actors, cp.num_gpus if ex.has_gpu() else 0.0)
        outs = ex.map(_nuclei, ctx, todo, desc="nuclei", factory=_make_backend, resources=res, actors=True)
    else:
        outs = ex.map(_nuclei, ctx, todo, desc="nuclei", factory=_make_backend,
                      resources=_resources(config.resources.nuclei))
    failed += _errors(outs, "nuclei")
    placement = {"nuclei": _placement(outs)}
    moments = [stages.load_moments(work, stages.NUCLEI, i) for i in range(len(grid))]
    ctx.nuclei_tables = assign_global_ids(moments)
    n_nuclei = sum(len(m[0]) for m in moments)
    n_clipped = sum(int(o.result["n_clipped"]) for o in outs if o.error is None)
    workers = {"nuclei": _unique([o.result["worker"] for o in outs if o.error is None and o.result["worker"]])}
    times["nuclei"] = time.perf_counter() - t
    if n_nuclei == 0:
        log.warning("no nuclei found in %s", chip.url)

    ctx.ids_digest = _digest(ctx.nuclei_tables)

    # 4. method-wide preparation (e.g. UCS training), cached in the work dir for resume.
    t = time.perf_counter()
    ctx.method_state = _prepare(method, ctx, ex, work, genes, n_nuclei, config, warnings)
    times["prepare"] = time.perf_counter() - t

    # 5. optional seeds of nucleus-less cells, owned and numbered after the nuclei.
    n_seeds = 0
    if type(method).find_seeds is not CellMethod.find_seeds:
        t = time.perf_counter()
        todo = [tl for tl in grid if tl.index not in work.done(stages.SEEDS)]
        resumed["seeds"] = len(grid) - len(todo)
        outs = _map_method(ex, _seeds, ctx, todo, "seeds", method, config)
        failed += _errors(outs, "seeds")
        seed_moments = [stages.load_moments(work, stages.SEEDS, i) for i in range(len(grid))]
        ctx.seed_tables = assign_global_ids(seed_moments, start=n_nuclei + 1)
        n_seeds = sum(len(m[0]) for m in seed_moments)
        ctx.ids_digest = _digest(ctx.nuclei_tables + ctx.seed_tables)
        times["seeds"] = time.perf_counter() - t

    # 6. cells, labels and assignment per tile.
    t = time.perf_counter()
    staging = work.url(ctx.stage("staging"))
    ctx.labels_url = storage.join(staging, K.LABELS_ZARR)
    attrs = {"pixel_size_um": chip.pixel_size_um, "origin_um": list(chip.origin_um)}
    create_labels(ctx.labels_url, grid.shape, grid.chunk_px, attrs, so)
    done_before = work.done(ctx.stage(stages.CELLS))
    todo = [tl for tl in grid if tl.index not in done_before]
    resumed["cells"] = len(grid) - len(todo)
    outs = _map_method(ex, _cells, ctx, todo, "cells", method, config)
    failed += _errors(outs, "cells")
    placement["cells"] = _placement(outs)
    times["cells"] = time.perf_counter() - t

    # 7. reduce per-tile partials into the outputs, then publish them into OUT.
    t = time.perf_counter()
    cells_done = sorted(work.done(ctx.stage(stages.CELLS)))
    parts = [work.load_npz(ctx.stage(stages.CELLS), i) for i in cells_done]
    ids, sums, counts = reduce_cells(parts, len(genes))
    df = cells_table(ids, sums, counts, chip.pixel_size_um, chip.origin_um, n_nuclei)
    failed += write_boundaries(ex, ctx, ids, sums, staging)  # GeoParquet outlines, per owning tile
    write_parquet(df, storage.join(staging, K.CELLS_PARQUET), so)
    n_tx_out = concat_transcripts([work.tile_url(ctx.stage(stages.TRANSCRIPTS), i, "parquet") for i in cells_done],
                                  storage.join(staging, K.TRANSCRIPTS_PARQUET), so)
    n_tx = int(sum(int(p["n_transcripts"]) for p in parts))
    n_assigned = int(sum(int(p["n_assigned"]) for p in parts))
    complete = not failed and len(cells_done) == len(grid)
    if complete and n_tx != result.n_rows:
        raise RuntimeError(f"accounting error: {n_tx} transcripts assigned by tiles, {result.n_rows} in input")
    counts_summary = {
        "n_transcripts_input": result.n_rows,
        "n_transcripts": n_tx,
        "n_assigned": n_assigned,
        "n_unassigned": n_tx - n_assigned,
        "n_cells": int(len(ids)),
        "n_nuclei": int(n_nuclei),
        "n_seeds": int(n_seeds),
        "n_clipped_nuclei": int(n_clipped),
        "n_genes": len(genes),
    }
    write_h5ad(df, counts, genes, storage.join(staging, K.CELLS_H5AD), so,
               {"counts": counts_summary, "pixel_size_um": chip.pixel_size_um})
    publish(staging, out_url, so, keep=not complete)
    times["outputs"] = time.perf_counter() - t

    tile_seconds = {int(i): float(p["seconds"]) for i, p in zip(cells_done, parts)}
    tiles = [
        {"index": tl.index, "core": list(tl.core), "seconds": tile_seconds.get(tl.index),
         "status": "done" if tl.index in tile_seconds else "failed"}
        for tl in grid
    ]
    for f in failed:
        if f["tile"] is not None:
            tiles[f["tile"]]["error"] = f["error"]
    summary = {
        "status": "complete" if complete else "incomplete",
        "stseg_version": _versions().get("stseg-dist"),
        "versions": _versions(),
        "chip": chip.url,
        "chip_meta": chip.meta.to_json(),
        "out": out_url,
        "run_key": work.key,
        "config": config.to_dict(),
        "n_tiles": len(grid),
        "grid": {"core_px": grid.core_px, "halo_px": grid.halo_px, "chunk_px": grid.chunk_px,
                 "rows": grid.n_rows, "cols": grid.n_cols, "shape": list(grid.shape)},
        "counts": counts_summary,
        "n_transcripts_written": n_tx_out,
        "failed": failed,
        "warnings": warnings,
        "workers": workers,
        "method": {"name": method.name, **method.describe_state(ctx.method_state)},
        "resumed_tiles": resumed,
        "placement": placement,
        "tiles": tiles,
    }
    if complete:
        storage.remove(work.root, so)  # checkpoints are only needed to resume an unfinished run
        fs, parent = storage.fs_and_path(storage.join(out_url, K.WORK_DIR), so)
        if fs.exists(parent) and not fs.ls(parent):
            fs.rm(parent, recursive=True)
    return summary


def _map_method(ex, fn, ctx, todo, desc, method: CellMethod, config) -> list[Outcome]:
    if method.uses_model:
        n, gpus = method.actor_resources()
        res = _resources(config.resources.cells, n, gpus if ex.has_gpu() else 0.0)
        return ex.map(fn, ctx, todo, desc=desc, factory=_make_method, resources=res, actors=True)
    return ex.map(fn, ctx, todo, desc=desc, factory=_make_method, resources=_resources(config.resources.cells))


def _prepare(method, ctx, ex, work, genes, n_nuclei, config, warnings):
    if type(method).prepare is CellMethod.prepare:
        return None
    # Plain data only (no pickle): the work dir may be writable by others, and resuming must
    # never run code found there. A file that is not this run's state is refused and recomputed.
    name = f"method_state-{ctx.ids_digest}.npz"
    bind = {"run_key": work.key, "ids": ctx.ids_digest, "method": method.name}
    try:
        cached = work.load_state(name, bind)
    except StateFileError as exc:
        warnings.append(f"refused a saved method state: {exc}; recomputing it")
        log.warning(warnings[-1])
        cached = None
    if cached is not None:
        return cached

    def map_tiles(fn, indices):
        outs = ex.map(_apply, ctx, [(fn, int(i)) for i in indices], desc="prepare",
                      resources=_resources(config.resources.cells))
        for o in outs:
            if o.error is not None:
                raise o.error
        return [o.result for o in outs]

    state = method.prepare(PrepareContext(ctx.chip, config, ctx.grid, genes, map_tiles, n_nuclei))
    work.save_state(name, state, bind)
    return state


def _placement(outs: list[Outcome]) -> dict[str, int]:
    """Tiles per node for one stage: shows where GPU and CPU work actually ran."""
    out: dict[str, int] = {}
    for o in outs:
        if o.error is None and o.node:
            out[o.node] = out.get(o.node, 0) + 1
    return out


def _unique(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for d in items:
        key = json.dumps(d, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _digest(tables: list[np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tables:
        h.update(np.ascontiguousarray(t).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]


def _float_max(ex, ctx) -> float:
    vmax = 0.0
    for tl in ctx.grid:
        rows, cols = tl.core_slices
        vmax = max(vmax, float(np.nanmax(ctx.chip.read_image(rows, cols, ctx.config.nuclei.channel))))
    return vmax if math.isfinite(vmax) and vmax > 0 else 1.0

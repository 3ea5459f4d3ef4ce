"""The driver: one chip through the pipeline, one named function per pass.

:func:`run_pipeline` opens the chip (or converts a vendor bundle into one), builds the tile grid
and an executor, then :func:`_run_passes` reads like the pipeline's description:

- ``_scan``: validate every transcript and build the gene vocabulary (writes nothing);
- ``_nuclei``: the backend's chip-wide ``prepare`` (e.g. the classical threshold), nuclei per tile
  owned by centroid, then chip-wide IDs by position;
- ``_prepare_cells``: the cell method's chip-wide ``prepare`` (e.g. UCS training);
- ``_seeds`` (methods that find cells without a nucleus): seeds owned and numbered after nuclei;
- ``_cells``: cells, labels and transcript assignment per tile;
- ``_cell_table``: the tiles' partials summed into the cell table;
- ``_boundaries``: cell and nucleus outlines, per tile owning each cell;
- ``_write_outputs``: the outputs, published into OUT;
- ``_summary``: what run.json records.

The driver holds only URLs, per-tile summaries and the cell table; tiles read their own slices
through the kernels of :mod:`stseg_dist.stages`. Finished tiles are skipped on resume.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import constants as K
from . import outfolder, redact, runlock, stages
from .boundaries import boundaries_done, concat_boundaries, core_pieces, owner_jobs
from .config import PipelineConfig, load_config
from .errors import InputError, OutputError, RunIncompleteError
from .executor import (
    LocalExecutor,
    Outcome,
    RayExecutor,
    init_ray,
    train_where_gpu,
)
from .io import storage
from .io.chip import Chip, open_chip
from .lifecycle import Plugin, PrepareContext, Resources
from .methods import CellMethod, get_method
from .nuclei import NucleiBackend, choose_backend, get_backend
from .outputs import (
    SPATIALDATA_ZARR,
    cells_table,
    concat_transcripts,
    create_labels,
    publish,
    reduce_cells,
    write_h5ad,
    write_parquet,
)
from .partials import CellPartials
from .scan import batch_row_groups, merge_scan
from .statefile import StateFileError
from .stitching import assign_global_ids
from .tiling import TileGrid, halo_um, make_grid
from .workdir import WorkDir, run_key

log = logging.getLogger(__name__)

VERSIONED = (
    "stseg-dist",
    "ray",
    "numpy",
    "zarr",
    "pyarrow",
    "anndata",
    "scikit-image",
    "torch",
    "cellpose",
)

#: A config, or a function of the converted bundle's pipeline hints that returns one (the CLI
#: puts the hints under --set; a batch slide under its overrides).
ConfigArg = PipelineConfig | Callable[[dict], PipelineConfig] | None


@dataclass
class Run:
    """One run's driver-side state: what the passes share and what run.json reports."""

    chip: Chip
    out_url: str
    config: PipelineConfig
    storage_options: dict
    method: CellMethod
    backend: NucleiBackend
    grid: TileGrid
    ex: Any
    resume: bool = True
    spatialdata: bool = False  # write OUT/spatialdata.zarr as the run's last stage
    times: dict[str, float] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)
    placement: dict[str, dict] = field(default_factory=dict)
    workers: dict[str, list] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tile_seconds: dict[int, float] = field(default_factory=dict)  # cell pass, per finished tile
    outlines: dict[str, int] = field(default_factory=dict)  # where the boundaries came from

    @contextmanager
    def timed(self, stage: str, add: bool = False):
        """Time the block as ``stage``; ``add`` adds it to the stage's earlier seconds."""
        t0 = time.perf_counter()
        yield
        self.times[stage] = (self.times.get(stage, 0.0) if add else 0.0) + (
            time.perf_counter() - t0
        )

    def resources(self, stage: str, plugin: Plugin | None = None) -> Resources:
        """``resources.<stage>`` over the plugin's declared resources (tasks when no plugin)."""
        declared = plugin.compute() if plugin else Resources()
        section = getattr(self.config.resources, stage)
        return declared.resolve(section, self.ex.has_gpu(), self.ex.cpu_count())

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)


# -- the pipeline ----------------------------------------------------------------------------
def run_pipeline(
    chip_url: str | Chip | None = None,
    out_url: str | None = None,
    config: ConfigArg = None,
    *,
    input: str | None = None,  # noqa: A002 - the CLI's and the batch manifest's word
    platform: str = "auto",
    reader_options: dict | None = None,
    address: str | None = None,
    storage_options: dict | None = None,
    local: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    spatialdata: bool = False,
) -> dict[str, Any]:
    """Segment a whole chip and write the outputs to ``out_url``; return the run summary.

    Give a chip (``chip_url``), or ``input``: a chip folder, or a vendor bundle that is converted
    (``platform``, ``reader_options`` as for ``stseg convert``) into ``OUT/_work/input_chip``
    first. ``config`` may be a function of the bundle's pipeline hints (see
    :func:`stseg_dist.io.bundles.pipeline_hints`); None means the defaults with those hints.
    ``local=True`` runs the same kernels in this process without Ray (the reference for tests
    and the single-process benchmark). A run whose tiles all finished has status "complete";
    otherwise outputs are still written, status is "incomplete" and RunIncompleteError is raised.
    """
    if out_url is None or (chip_url is None) == (input is None):
        raise InputError("run_pipeline needs an output and exactly one of a chip or an input")
    storage_options = dict(storage_options or {})
    how = {"address": address, "local": local, "resume": resume, "spatialdata": spatialdata}
    # absolute locations: run.json names them, and exports read them from any directory
    out_url = storage.absolute(out_url)
    chip_url = (
        chip_url if isinstance(chip_url, Chip) or chip_url is None else storage.absolute(chip_url)
    )
    input = None if input is None else storage.absolute(input)
    with outfolder.guarded_output(out_url, storage_options, overwrite):
        if input is None:
            return _run(chip_url, out_url, _config(config, {}), storage_options, **how)
        with runlock.hold(out_url, storage_options):  # the conversion into OUT/_work is this run's
            chip_url, hints = open_input(input, out_url, platform, reader_options, storage_options)
            return _run(chip_url, out_url, _config(config, hints), storage_options, **how)


def _config(config: ConfigArg, hints: dict) -> PipelineConfig:
    config = config(hints) if callable(config) else (config or load_config(overrides=hints))
    return config.validate()


def _resolve_nuclei(config: PipelineConfig, chip: Chip) -> tuple[PipelineConfig, dict]:
    """``nuclei.backend=auto`` made concrete for this chip, so every stage and run.json see one
    name; returns the config and run.json's record of the choice.
    """
    asked = config.nuclei.backend
    name, why = choose_backend(asked, chip)
    if name != asked:
        config = replace(config, nuclei=replace(config.nuclei, backend=name))
    return config, {"backend": name, "requested": asked, "reason": why}


def open_input(
    input_url: str, out_url: str, platform: str, reader_options: dict | None, storage_options: dict
) -> tuple[str, dict]:
    """A chip folder as it is; a vendor bundle converted into ``OUT/_work/input_chip``.
    Returns the chip URL and the config hints its contents suggest.
    """
    from .io.bundles import convert_bundle, pipeline_hints

    if storage.exists(storage.join(input_url, K.CHIP_JSON), storage_options):
        return input_url, {}
    chip = storage.join(out_url, K.WORK_DIR, "input_chip")
    report = convert_bundle(
        input_url,
        chip,
        platform,
        options=reader_options,
        storage_options=storage_options or None,
        overwrite=True,
    )
    log.info(
        "converted %s (%s): %d transcripts, dropped %s -> %s",
        redact.scrub(str(report["input"])),
        report["platform"],
        report["n_transcripts"],
        report.get("dropped", {}),
        chip,
    )
    return chip, pipeline_hints(report)


def _run(
    chip_url: str | Chip,
    out_url: str,
    config: PipelineConfig,
    storage_options: dict,
    *,
    address: str | None,
    local: bool,
    resume: bool,
    spatialdata: bool = False,
) -> dict[str, Any]:
    redact.register(
        config.to_dict(), {"storage_options": storage_options}
    )  # masked in logs and messages
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    t_all = time.perf_counter()
    chip = chip_url if isinstance(chip_url, Chip) else open_chip(chip_url, storage_options)
    config, nuclei_choice = _resolve_nuclei(config, chip)
    method = get_method(config.cells.method, config, chip.meta.facts)
    backend = get_backend(
        config.nuclei.backend, config, chip
    )  # validates the name and its inputs early
    _check_output(out_url, storage_options)
    with runlock.hold(
        out_url, storage_options
    ):  # one run at a time per OUT: a second one refuses, naming the lock
        summary = _run_locked(
            chip,
            out_url,
            config,
            storage_options,
            method,
            backend,
            address,
            local,
            resume,
            spatialdata,
        )
        summary["nuclei"] = {**summary.get("nuclei", {}), **nuclei_choice}  # + prepare's state
        summary["started"] = started
        summary["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
        summary["stage_seconds"]["total"] = time.perf_counter() - t_all
        summary = redact.redact(
            summary
        )  # no credential in run.json (storage options, URLs, errors)
        storage.write_json_atomic(storage.join(out_url, K.RUN_JSON), summary, storage_options)
    if summary["status"] != "complete":
        raise RunIncompleteError(
            f"{len(summary['failed'])} tile(s) failed; outputs in {redact.scrub(out_url)} are "
            "incomplete "
            f"(see {K.RUN_JSON}); re-run the same command to redo only those tiles"
        )
    return summary


def _run_locked(
    chip: Chip,
    out_url: str,
    config: PipelineConfig,
    storage_options: dict,
    method: CellMethod,
    backend: NucleiBackend,
    address: str | None,
    local: bool,
    resume: bool,
    spatialdata: bool = False,
) -> dict[str, Any]:
    grid = make_grid(
        chip.shape_yx,
        chip.pixel_size_um,
        config.tiling.tile_size_um,
        halo_um(config, method.reach_um(), backend.context_px() * chip.pixel_size_um),
        config.tiling.chunk_px,
    )
    started_ray = False
    if local:
        ex: Any = LocalExecutor(progress=False, fail_fast=config.runtime.fail_fast)
    else:
        started_ray = init_ray(address)
        ex = RayExecutor(
            config.runtime.max_in_flight,
            config.runtime.max_retries,
            config.runtime.progress,
            config.runtime.fail_fast,
        )
    run = Run(
        chip, out_url, config, storage_options, method, backend, grid, ex, resume, spatialdata
    )
    try:
        summary = _run_passes(run)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    summary["stage_seconds"] = run.times
    return summary


def _run_passes(run: Run) -> dict:
    with run.timed("scan"):
        scan = _scan(run)
    ctx = _open_work(run, scan.genes, scan.n_rows)
    with run.timed("nuclei"):
        _nuclei(run, ctx)
    with run.timed("prepare"):
        ctx.method_state = _prepare_cells(run, ctx)
    if type(run.method).find_seeds is not CellMethod.find_seeds:
        with run.timed("seeds"):
            _seeds(run, ctx)
    spill = run.config.cells.spillover
    if spill.active(run.config) and spill.fitted():
        with run.timed("spillover"):
            ctx.spillover_state = _spillover_model(run, ctx)
    rasters = points = None
    try:
        with run.timed("cells"):
            _create_labels(run, ctx)
            _import_in_background(run)  # while the driver waits for the cell tiles
            rasters = _store_rasters_in_background(run, ctx)  # metadata now, blocks after
            _cells(run, ctx)
        if rasters is not None:  # the label arrays are final: the store's raster blocks may run
            rasters.release(not run.failed)
        with run.timed("outputs"):
            with run.timed("outputs.tables"):
                cells = _cell_table(run, ctx)
        points = _store_points_in_background(run, ctx, cells)
        with run.timed("boundaries"):  # GeoParquet outlines, per owning tile: a stage of its own
            _boundaries(run, ctx, cells)
        with run.timed("outputs", add=True):
            complete = _write_outputs(run, ctx, cells, scan.n_rows)
        if complete and run.spatialdata:
            with run.timed("spatialdata"):
                _spatialdata(run, ctx, rasters, points)
            rasters = points = None
    finally:  # no store (an incomplete run, or a failure): nothing may be left writing
        if rasters is not None:
            rasters.release(False)
        for future, folder in ((rasters, _rasters_folder), (points, _points_folder)):
            if future is not None:
                import shutil

                future.exception()  # waits; its error matters only to a store being written
                future.thread.join()
                shutil.rmtree(folder(ctx), ignore_errors=True)
    with run.timed("outputs", add=True), run.timed("outputs.publish"):
        publish(
            ctx.work.url(ctx.stage("staging")), run.out_url, run.storage_options, keep=not complete
        )
    return _summary(run, ctx, complete)


# -- the passes ------------------------------------------------------------------------------
def _scan(run: Run):
    """Validate every transcript (fails the run on a bad one) and build the gene vocabulary."""
    chip = run.chip
    outs = run.ex.map(
        stages.scan_batch,
        (chip, chip.pixel_size_um),
        batch_row_groups(chip.transcripts.row_groups),
        desc="scan",
        resources=run.resources("scan"),
    )
    result = merge_scan(_results(outs), chip.transcripts)
    if result.n_rows == 0:
        raise InputError(f"{chip.transcripts_url}: the chip has no transcripts (empty table)")
    missing, total = chip.missing_image_chunks()
    if missing:
        run.warn(
            f"{chip.image.url}: {missing} of {total} image chunks are not stored and read as the "
            "fill "
            "value (zarr semantics); segmentation sees no stain there"
        )
    run.counts.update(n_transcripts_input=result.n_rows, n_genes=len(result.genes))
    return result


def _open_work(run: Run, genes: list[str], n_rows: int) -> stages.RunContext:
    """The run's work dir (checkpoints, keyed by chip, input size and config) and tile context."""
    key = run_key(
        run.chip.meta.to_json(), run.chip.url, n_rows, redact.redact(run.config.to_dict())
    )
    work = WorkDir(run.out_url, key, run.storage_options)
    if not run.resume:
        storage.remove(work.root, run.storage_options)
    work.save_json(
        "manifest.json",
        redact.redact(
            {"chip": run.chip.url, "config": run.config.to_dict(), "n_tiles": len(run.grid)}
        ),
    )
    return stages.RunContext(run.chip, run.config, run.grid, work, genes)


def _nuclei(run: Run, ctx: stages.RunContext) -> None:
    """The backend's chip-wide state, nuclei per tile owned by centroid, then chip-wide IDs."""
    ctx.nuclei_state = _prepare(run, ctx, run.backend, "nuclei", stages.apply_to_tile)
    todo = _todo(run, ctx, stages.NUCLEI, "nuclei")
    outs = run.ex.map(
        stages.nuclei_tile,
        ctx,
        todo,
        desc="nuclei",
        factory=stages.load_backend,
        resources=run.resources("nuclei", run.backend),
    )
    _record(run, outs, "nuclei")
    moments = [stages.load_moments(ctx.work, stages.NUCLEI, i) for i in range(len(run.grid))]
    ctx.nuclei_tables = assign_global_ids(moments)
    ctx.ids_digest = _digest(ctx.nuclei_tables)
    run.counts["n_nuclei"] = sum(len(m[0]) for m in moments)
    run.counts["n_clipped_nuclei"] = sum(
        int(o.result["n_clipped"]) for o in outs if o.error is None
    )
    run.workers["nuclei"] = _unique(
        [o.result["worker"] for o in outs if o.error is None and o.result["worker"]]
    )
    if run.counts["n_nuclei"] == 0:
        log.warning("no nuclei found in %s", run.chip.url)


def _prepare_cells(run: Run, ctx: stages.RunContext) -> Any:
    """The cell method's chip-wide state (e.g. UCS weights), bound to these nuclei IDs."""
    return _prepare(run, ctx, run.method, "cells", stages.apply_to_tile_data)


def _seeds(run: Run, ctx: stages.RunContext) -> None:
    """Seeds of nucleus-less cells, owned by centroid and numbered after the nuclei."""
    todo = _todo(run, ctx, stages.SEEDS, "seeds")
    outs = run.ex.map(
        stages.seeds_tile,
        ctx,
        todo,
        desc="seeds",
        factory=stages.load_method,
        resources=run.resources("cells", run.method),
    )
    _record(run, outs, "seeds", placement=False)
    seed_moments = [stages.load_moments(ctx.work, stages.SEEDS, i) for i in range(len(run.grid))]
    ctx.seed_tables = assign_global_ids(seed_moments, start=run.counts["n_nuclei"] + 1)
    run.counts["n_seeds"] = sum(len(m[0]) for m in seed_moments)
    ctx.ids_digest = _digest(ctx.nuclei_tables + ctx.seed_tables)


def _spillover_model(run: Run, ctx: stages.RunContext):
    """``cells.spillover.rule: diffusion``: the chip's cell types (from every nucleus's counts,
    summed over tile cores) and its diffusion prior (fitted to a histogram summed over tile
    cores); ``gate: decay`` with ``rule: ratio``: whether the ratio's passing share decays with
    distance (a histogram summed over tile cores). Each the same at any tiling and for any cell
    method. Recomputed on resume (deterministic).
    """
    from functools import partial

    from . import spillover as S

    cfg, n_genes = run.config.cells.spillover, len(ctx.genes)
    tasks = replace(run.resources("cells"), actors=0)

    def map_tiles(fn, desc):
        jobs = [(fn, tile.index) for tile in run.grid]
        return _results(
            run.ex.map(stages.apply_to_tile_data, ctx, jobs, desc=desc, resources=tasks)
        )

    reach = cfg.reach(run.config)
    if cfg.rule == "ratio":  # gate: decay (the ratio's own statistic against the distance)
        hists = map_tiles(
            partial(
                S.gate_histogram,
                cfg=cfg,
                n_genes=n_genes,
                reach_um=reach,
                expansion_um=run.config.cells.expansion.distance_um,
            ),
            "spillover",
        )
        return S.fit_gate(np.sum(hists, axis=0), run.chip.pixel_size_um, reach, cfg.significance)

    parts = map_tiles(partial(S.compartment_counts, n_genes=n_genes), "spillover")
    ids, counts = S.merge_counts(parts, n_genes)
    state = S.fit_types(ids, counts, cfg.max_types)
    hists = map_tiles(
        partial(
            S.decay_histogram,
            state=state,
            reach_um=reach,
            expansion_um=run.config.cells.expansion.distance_um,
        ),
        "spillover",
    )
    hist = np.sum(hists, axis=0)
    state.baseline, state.amplitude, state.scale_um, state.lrt = S.fit_decay(
        hist, run.chip.pixel_size_um, reach, cfg.significance
    )
    state.n_pairs = int(hist.sum())
    state.n_nuclei = int(run.counts.get("n_nuclei", 0))
    return state


def _create_labels(run: Run, ctx: stages.RunContext) -> None:
    """The staging labels.zarr the cell tiles write into."""
    ctx.labels_url = storage.join(ctx.work.url(ctx.stage("staging")), K.LABELS_ZARR)
    attrs = {"pixel_size_um": run.chip.pixel_size_um, "origin_um": list(run.chip.origin_um)}
    create_labels(ctx.labels_url, run.grid.shape, run.grid.chunk_px, attrs, run.storage_options)


def _cells(run: Run, ctx: stages.RunContext) -> None:
    """Cells, labels (into the staging labels.zarr) and transcript assignment per tile."""
    todo = _todo(run, ctx, ctx.stage(stages.CELLS), "cells")
    outs = run.ex.map(
        stages.cells_tile,
        ctx,
        todo,
        desc="cells",
        factory=stages.load_method,
        resources=run.resources("cells", run.method),
    )
    _record(run, outs, "cells")


@dataclass
class CellTable:
    """The cell pass's partials summed: per-cell totals, the count matrix and the cell table."""

    tiles: list[int]  # the tiles whose partials it holds (finished cell tiles)
    parts: list[CellPartials]
    ids: np.ndarray
    sums: dict[str, np.ndarray]
    counts: Any  # scipy CSR (cells x genes)
    df: Any  # pandas DataFrame: cells.parquet


def _cell_table(run: Run, ctx: stages.RunContext) -> CellTable:
    """Sum the finished tiles' partials into per-cell totals and the cell table."""
    work, chip = ctx.work, run.chip
    tiles = sorted(work.done(ctx.stage(stages.CELLS)))
    parts = [CellPartials.from_npz(work.load_npz(ctx.stage(stages.CELLS), i)) for i in tiles]
    ids, sums, counts = reduce_cells(parts, len(ctx.genes))
    df = cells_table(ids, sums, counts, chip.pixel_size_um, chip.origin_um, run.counts["n_nuclei"])
    return CellTable(tiles, parts, ids, sums, counts, df)


def _boundaries(run: Run, ctx: stages.RunContext, cells: CellTable) -> None:
    """Cell and nucleus outlines, each from the tile owning its centroid (as the cells kernel
    traced it in the cores that hold it, joined where it is cut), then both GeoParquet files into
    the staging folder.
    """
    jobs = owner_jobs(
        run.grid,
        cells.ids,
        cells.sums["area"],
        cells.sums["sum_r"],
        cells.sums["sum_c"],
        core_pieces(ctx, cells.tiles, cells.ids),
    )
    done = boundaries_done(ctx)
    todo = [j for j in jobs if j.index not in done]
    run.resumed["boundaries"] = len(jobs) - len(todo)
    outs = run.ex.map(
        stages.boundaries_tile, ctx, todo, desc="boundaries", resources=run.resources("scan")
    )
    _record(run, outs, "boundaries")
    done_now = [o.result for o in outs if o.error is None]
    run.outlines = {  # this attempt's tiles (a resume counts only what it redid)
        "from_cells_kernel": sum(r["n_from_kernel"] for r in done_now),
        "joined_from_cores": sum(r["n_joined"] for r in done_now),
        "re_read": sum(r["n_re_read"] for r in done_now),
        "grown_windows": sum(r["n_grown"] for r in done_now),
    }
    concat_boundaries(ctx, ctx.work.url(ctx.stage("staging")))


def _write_outputs(run: Run, ctx: stages.RunContext, cells: CellTable, n_input: int) -> bool:
    """The cell table, transcripts and AnnData into staging, published into OUT; True when the run
    is complete.
    """
    storage_options, work, chip = run.storage_options, ctx.work, run.chip
    staging = work.url(ctx.stage("staging"))
    with run.timed("outputs.tables", add=True):
        write_parquet(cells.df, storage.join(staging, K.CELLS_PARQUET), storage_options)
        run.counts["n_transcripts_written"] = concat_transcripts(
            [work.tile_url(ctx.stage(stages.TRANSCRIPTS), i, "parquet") for i in cells.tiles],
            storage.join(staging, K.TRANSCRIPTS_PARQUET),
            storage_options,
        )
    if run.config.cells.spillover.active(run.config):
        run.counts["n_spillover_moved"] = _sum_column(
            storage.join(staging, K.TRANSCRIPTS_PARQUET), K.SPILLOVER_MOVED, storage_options
        )
    n_tx = sum(p.n_transcripts for p in cells.parts)
    n_assigned = sum(p.n_assigned for p in cells.parts)
    complete = not run.failed and len(cells.tiles) == len(run.grid)
    if complete and n_tx != n_input:
        raise RuntimeError(
            f"accounting error: {n_tx} transcripts assigned by tiles, {n_input} in input"
        )
    run.counts.update(
        n_transcripts=n_tx,
        n_assigned=n_assigned,
        n_unassigned=n_tx - n_assigned,
        n_cells=len(cells.ids),
    )
    with run.timed("outputs.anndata"):
        write_h5ad(
            cells.df,
            cells.counts,
            ctx.genes,
            storage.join(staging, K.CELLS_H5AD),
            storage_options,
            {
                "counts": _counts(run),
                "pixel_size_um": chip.pixel_size_um,
                **_conversion_counts(chip),
            },
            _chip_features(chip),
        )
    run.tile_seconds = {int(i): p.seconds for i, p in zip(cells.tiles, cells.parts, strict=False)}
    return complete


def _import_in_background(run: Run) -> None:
    """Import the output writers' libraries (anndata; spatialdata when the store is written) in
    a thread: seconds of imports the driver would otherwise spend after the tiles finish.
    """
    import importlib.util
    import threading

    names = ["anndata"]
    if run.spatialdata:  # and what its writers import on first use (seconds on this machine)
        names += [
            "spatialdata",
            "spatialdata.models",
            "spatialdata._io",
            "geopandas",
            "dask.array",
            "dask.dataframe",
            "ome_zarr.writer",
        ]

    def load():
        import warnings

        # spatialdata's dependency xarray-schema imports pkg_resources, which warns on import
        warnings.filterwarnings(
            "ignore", message="pkg_resources is deprecated", category=UserWarning
        )
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - absent or broken: the writer itself reports it
                continue

    threading.Thread(target=load, name="stseg-import-writers", daemon=True).start()


def spatialdata_unavailable(out_url: str) -> str | None:
    """Why ``spatialdata.zarr`` cannot be written into ``out_url`` (None: it can): a remote OUT,
    or the spatialdata extra not installed. The CLI says it before the run; the run warns.
    """
    import importlib.util

    if storage.is_remote(out_url):
        return (
            "spatialdata.zarr: not written for a remote OUT (stseg export --to spatialdata on a "
            "local copy)"
        )
    if importlib.util.find_spec("spatialdata") is None:
        return (
            "spatialdata.zarr: not written (pip install 'stseg-dist[spatialdata]', then stseg "
            "export)"
        )
    return None


def _rasters_folder(ctx: stages.RunContext):
    from pathlib import Path

    return Path(ctx.work.url(ctx.stage("staging"))) / ".spatialdata-rasters"


class _StoreRasters(Future):
    """The store's rasters being written: the result is their folder. Their metadata is written
    at once; the blocks wait for :meth:`release` (the label arrays final), and are not written
    if it says so.
    """

    def __init__(self):
        super().__init__()
        self._released = threading.Event()
        self._go = False
        self.thread: threading.Thread | None = None

    def release(self, go: bool) -> None:
        if not self._released.is_set():
            self._go = go
            self._released.set()

    def wait_release(self) -> bool:
        self._released.wait()
        return self._go


def _store_rasters_in_background(run: Run, ctx: stages.RunContext):
    """Start the store's images and labels once the label arrays exist (they need only those
    and the chip): a driver thread writes their metadata with spatialdata's writer (no pixels)
    while the cell tiles run, then, once the cell pass has finished them
    (:meth:`_StoreRasters.release`), hands the pyramid blocks to the run's tasks
    (:func:`stages.raster_block`), beside the boundary tiles. None when no store will be
    written.
    """
    import shutil

    if not run.spatialdata or run.failed or spatialdata_unavailable(run.out_url):
        return None
    from pathlib import Path

    from .export._run import RunFiles
    from .export.spatialdata import finish_rasters, raster_phases

    folder = _rasters_folder(ctx)
    shutil.rmtree(folder, ignore_errors=True)
    files = RunFiles(Path(ctx.work.url(ctx.stage("staging"))), {}, run.chip)
    future = _StoreRasters()

    def write() -> None:
        try:
            import zarr

            zarr.open_group(str(folder), mode="w")
            phases = raster_phases(files, folder)
            if not future.wait_release():
                raise RuntimeError("the store's rasters were not written: the run stopped first")
            for jobs in phases:
                _store_tasks(run, ctx, stages.raster_block, jobs)
            finish_rasters(files, folder)
            future.set_result(folder)
        except BaseException as exc:  # noqa: BLE001 - raised where the store is written
            future.set_exception(exc)

    future.thread = threading.Thread(target=write, name="stseg-store-rasters", daemon=True)
    future.thread.start()
    return future


def _store_tasks(run: Run, ctx: stages.RunContext, fn, jobs) -> None:
    """Run the store's tasks with no bar of their own (they run beside the boundaries' and
    tables'); the first that fails fails the store.
    """
    outs = run.ex.map(fn, ctx, jobs, desc="spatialdata", resources=run.resources("scan"), bar=False)
    _results(outs)


def _points_folder(ctx: stages.RunContext):
    from pathlib import Path

    return Path(ctx.work.url(ctx.stage("staging"))) / ".spatialdata-points"


def _store_points_in_background(run: Run, ctx: stages.RunContext, cells: CellTable):
    """Start writing the store's points, the largest element, one partition per tile by the
    run's tasks (from the tiles' transcript parts, never the whole table), as soon as the cell
    table says where each tile's rows start: they run beside the boundary tiles. A future
    holding the partitions' folder, or None when no store will be written or the chip has no
    transcripts (the store's empty points element then comes from the table).
    """
    import shutil
    import threading
    from concurrent.futures import Future

    if not run.spatialdata or run.failed or spatialdata_unavailable(run.out_url):
        return None
    parts = _points_folder(ctx)
    shutil.rmtree(parts, ignore_errors=True)
    jobs, start = [], 0
    for i, p in zip(cells.tiles, cells.parts, strict=True):
        if p.n_transcripts:  # as transcripts.parquet: a tile without transcripts has no part
            jobs.append(stages.PointsJob(int(i), len(jobs), start, str(parts)))
            start += p.n_transcripts
    if not jobs:  # no transcripts: the store's empty points element, from the table
        return None
    future: Future = Future()
    parts.mkdir(parents=True)

    def write() -> None:
        try:
            _store_tasks(run, ctx, stages.points_tile, jobs)
            future.set_result(parts)
        except BaseException as exc:  # noqa: BLE001 - raised where the store is written
            future.set_exception(exc)

    future.thread = threading.Thread(target=write, name="stseg-store-points", daemon=True)
    future.thread.start()
    return future


def _spatialdata(run: Run, ctx: stages.RunContext, rasters=None, points=None) -> None:
    """``spatialdata.zarr`` from the staged outputs (published with them), where it can be
    written (see :func:`spatialdata_unavailable`); otherwise a warning says why not.

    The driver writes the shapes and tables; the points (:func:`_store_points_in_background`)
    and the images and labels (:func:`_store_rasters_in_background`) come from the run's tasks,
    started after the cell pass. run.json's ``spatialdata.waiting`` is how long the stage then
    waited for them.
    """
    import shutil
    from pathlib import Path

    why = spatialdata_unavailable(run.out_url)
    if why:
        run.warn(why)
        return
    from .export._run import RunFiles
    from .export.spatialdata import write_spatialdata

    staging = Path(ctx.work.url(ctx.stage("staging")))
    target = staging / SPATIALDATA_ZARR
    storage.remove(str(target), run.storage_options)

    def waited(future):
        if future is None:
            return None

        def get():
            with run.timed("spatialdata.waiting", add=True):
                return future.result()

        return get

    try:
        write_spatialdata(
            RunFiles(staging, {}, run.chip), target, waited(points), rasters=waited(rasters)
        )
    finally:
        if points is not None:
            points.exception()  # never leave tasks writing behind a failed store
            shutil.rmtree(_points_folder(ctx), ignore_errors=True)


def _summary(run: Run, ctx: stages.RunContext, complete: bool) -> dict:
    """run.json's body; a complete run's checkpoints are removed (only a resume needs them)."""
    tile_seconds = run.tile_seconds
    tiles = [
        {
            "index": tl.index,
            "core": list(tl.core),
            "seconds": tile_seconds.get(tl.index),
            "status": "done" if tl.index in tile_seconds else "failed",
        }
        for tl in run.grid
    ]
    for f in run.failed:
        if f["tile"] is not None:
            tiles[f["tile"]]["error"] = f["error"]
    grid, versions = run.grid, _versions()
    summary = {
        "status": "complete" if complete else "incomplete",
        "stseg_version": versions.get("stseg-dist"),
        "versions": versions,
        "chip": run.chip.url,
        "chip_meta": run.chip.meta.to_json(),
        "out": run.out_url,
        "run_key": ctx.work.key,
        "config": run.config.to_dict(),
        "n_tiles": len(grid),
        "grid": {
            "core_px": grid.core_px,
            "halo_px": grid.halo_px,
            "chunk_px": grid.chunk_px,
            "rows": grid.n_rows,
            "cols": grid.n_cols,
            "shape": list(grid.shape),
        },
        "counts": _counts(run),
        "n_transcripts_written": run.counts["n_transcripts_written"],
        "failed": run.failed,
        "warnings": run.warnings,
        "workers": run.workers,
        "method": {"name": run.method.name, **run.method.describe_state(ctx.method_state)},
        **(
            {"spillover": ctx.spillover_state.describe()} if ctx.spillover_state is not None else {}
        ),
        "nuclei": {"backend": run.backend.name, **run.backend.describe_state(ctx.nuclei_state)},
        "resumed_tiles": run.resumed,
        "boundaries": run.outlines,
        "placement": run.placement,
        "tiles": tiles,
    }
    if complete:
        _remove_work(run, ctx.work)
    return summary


# -- helpers ---------------------------------------------------------------------------------
def _prepare(run: Run, ctx: stages.RunContext, plugin: Plugin, stage: str, apply) -> Any:
    """A plugin's chip-wide state, computed once and saved in the work dir for resume.

    Saved as plain data only (no pickle): the work dir may be writable by others, and resuming
    must never run code found there. A file that is not this run's state is refused and
    recomputed. A plugin without a ``prepare`` has no state.
    """
    if type(plugin).prepare is Plugin.prepare:
        return None
    name = (
        "nuclei_state.npz" if stage == "nuclei" else f"method_state-{ctx.ids_digest}.npz"
    )  # after the IDs
    bind = {"run_key": ctx.work.key, "ids": ctx.ids_digest, "method": plugin.name}
    try:
        cached = ctx.work.load_state(name, bind)
    except StateFileError as exc:
        run.warn(
            f"refused a saved {'method' if stage == 'cells' else stage} state: {exc}; recomputing "
            "it"
        )
        cached = None
    if cached is not None:
        return cached
    tasks = replace(run.resources(stage), actors=0)

    def map_tiles(fn, indices, desc: str = "prepare"):
        return _results(
            run.ex.map(apply, ctx, [(fn, int(i)) for i in indices], desc=desc, resources=tasks)
        )

    gpus = run.resources(stage, plugin).num_gpus
    state = plugin.prepare(
        PrepareContext(
            run.chip,
            run.config,
            run.grid,
            ctx.genes,
            map_tiles,
            run.counts.get("n_nuclei", 0),
            lambda train: train_where_gpu(train, gpus),
        )
    )
    ctx.work.save_state(name, state, bind)
    return state


def _todo(run: Run, ctx: stages.RunContext, stage_dir: str, stage: str) -> list:
    """Tiles of a pass not finished before (a resume skips the others)."""
    done = ctx.work.done(stage_dir)
    todo = [tl for tl in run.grid if tl.index not in done]
    run.resumed[stage] = len(run.grid) - len(todo)
    return todo


def _record(run: Run, outs: list[Outcome], stage: str, placement: bool = True) -> None:
    """A pass's failed tiles (into run.failed) and the nodes its tiles ran on."""
    run.failed += [
        {
            "stage": stage,
            "tile": getattr(o.item, "index", None),
            "error": f"{type(o.error).__name__}: {o.error}",
        }
        for o in outs
        if o.error is not None
    ]
    if placement:
        nodes: dict[str, int] = {}
        for o in outs:
            if o.error is None and o.node:
                nodes[o.node] = nodes.get(o.node, 0) + 1
        run.placement[stage] = nodes


def _results(outs: list[Outcome]) -> list:
    """Every result of a chip-wide pass, raising the first error (such a pass cannot be partial)."""
    for o in outs:
        if o.error is not None:
            raise o.error
    return [o.result for o in outs]


def _sum_column(url: str, column: str, storage_options: dict) -> int:
    """The sum of one column of a parquet file (read alone); 0 where the file has no such column
    (no tile wrote it: an incomplete run whose tiles all failed).
    """
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(url, storage_options)
    with fs.open(path, "rb") as fh:
        parquet = pq.ParquetFile(fh)
        if column not in parquet.schema_arrow.names:
            return 0
        return int(parquet.read(columns=[column]).column(0).to_numpy().sum())


def _counts(run: Run) -> dict[str, int]:
    c = run.counts
    keys = (
        "n_transcripts_input",
        "n_transcripts",
        "n_assigned",
        "n_unassigned",
        "n_cells",
        "n_nuclei",
    )
    return {
        **{k: int(c[k]) for k in keys},
        "n_seeds": int(c.get("n_seeds", 0)),
        **({"n_spillover_moved": int(c["n_spillover_moved"])} if "n_spillover_moved" in c else {}),
        "n_clipped_nuclei": int(c["n_clipped_nuclei"]),
        "n_genes": int(c["n_genes"]),
    }


def _check_output(out_url: str, storage_options: dict) -> None:
    """Refuse an OUT that is a file or cannot be written, before anything is computed."""
    fs, path = storage.fs_and_path(out_url, storage_options)
    if fs.exists(path) and not fs.isdir(path):
        raise OutputError(f"output {out_url} exists and is a file, not a folder")
    try:
        fs.makedirs(path, exist_ok=True)
        work = storage.join(out_url, K.WORK_DIR)
        had_work = fs.exists(storage.fs_and_path(work, storage_options)[1])
        probe = storage.join(work, ".write-probe")
        storage.write_bytes_atomic(probe, b"ok", storage_options)
        storage.remove(probe, storage_options)
        if not had_work:
            storage.remove(work, storage_options)  # no empty _work left by a run rejected later
    except (OSError, PermissionError) as exc:
        raise OutputError(f"output {out_url} is not writable: {exc}") from exc


def _chip_features(chip: Chip):
    """The chip's feature list (``features.parquet``, from a bundle that has one), or None."""
    import pandas as pd

    url = storage.join(chip.url, K.FEATURES_PARQUET)
    if storage.exists(url, chip.storage_options):
        fs, path = storage.fs_and_path(url, chip.storage_options)
        with fs.open(path, "rb") as fh:
            return pd.read_parquet(fh)
    return None


def _conversion_counts(chip: Chip) -> dict:
    """What the bundle reader dropped (control probes, low quality), for AnnData's uns."""
    from .io.bundles import REPORT_JSON

    url = storage.join(chip.url, REPORT_JSON)
    if not storage.exists(url, chip.storage_options):
        return {}
    rep = storage.read_json(url, chip.storage_options)
    return {"dropped_at_conversion": {k: int(v) for k, v in (rep.get("dropped") or {}).items()}}


def _remove_work(run: Run, work: WorkDir) -> None:
    storage.remove(work.root, run.storage_options)
    fs, parent = storage.fs_and_path(storage.join(run.out_url, K.WORK_DIR), run.storage_options)
    if fs.exists(parent) and not fs.ls(parent):
        fs.rm(parent, recursive=True)


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
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
    h = hashlib.sha256()
    for t in tables:
        h.update(np.ascontiguousarray(t).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]

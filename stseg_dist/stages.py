"""The tile kernels of every pass, in the one form the executor runs: ``kernel(ctx, worker, item)``.

``ctx`` is the :class:`RunContext` (shipped once), ``worker`` what a factory here built for the
task or actor (a loaded nuclei backend or cell method, see :func:`load_backend` and
:func:`load_method`), ``item`` one tile (or a batch of row groups for the scan). They run the same
in a Ray task, a Ray actor or in-process. They are not pure: each reads its own slice of the chip,
writes its result under the run's work dir (atomically: a file that exists is a finished tile) or
into the labels zarr (its own core's chunks), and returns only small summaries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from . import constants as K
from .boundaries import CORE_OUTLINES, BoundaryJob, core_outlines, vectorise_owned
from .config import PipelineConfig
from .io import storage
from .io.chip import Chip
from .io.transcripts import ROW
from .methods import CellMethod, get_method
from .nuclei import NucleiBackend, get_backend
from .partials import CellPartials
from .scan import scan_row_groups
from .stitching import OwnedObjects, owned_objects, paint_window
from .stitching.ownership import _empty
from .tiledata import TileData, TileResult, load_tile_data
from .tiling import Tile, TileGrid
from .workdir import WorkDir

NUCLEI = "nuclei"
SEEDS = "seeds"
CELLS = "cells"
TRANSCRIPTS = "transcripts"


@dataclass
class RunContext:
    """What every tile kernel shares; shipped once to the object store."""

    chip: Chip
    config: PipelineConfig
    grid: TileGrid
    work: WorkDir
    genes: list[str] = field(default_factory=list)
    labels_url: str = ""
    nuclei_tables: list[np.ndarray] | None = None
    seed_tables: list[np.ndarray] | None = None
    nuclei_state: object = (
        None  # what NucleiBackend.prepare returned (e.g. the chip-wide threshold)
    )
    method_state: object = None  # what CellMethod.prepare returned (e.g. trained weights)
    spillover_state: object = None  # cells.spillover: DiffusionState or RatioGate, chip-wide
    ids_digest: str = ""  # fingerprint of the global IDs; cell-pass checkpoints are keyed by it

    def stage(self, name: str) -> str:
        return f"{name}-{self.ids_digest}" if self.ids_digest else name


# -- factories: one loaded plugin per task or actor --------------------------------------------
def load_backend(ctx: RunContext) -> NucleiBackend:
    backend = get_backend(ctx.config.nuclei.backend, ctx.config, ctx.chip)
    backend.load(ctx.nuclei_state)
    return backend


def load_method(ctx: RunContext) -> CellMethod:
    method = get_method(ctx.config.cells.method, ctx.config, ctx.chip.meta.facts)
    method.load(ctx.method_state)
    return method


# -- scan: validate transcripts, gene vocabulary (writes nothing) -------------------------------
def scan_batch(shared: tuple[Chip, float], _worker, groups: list[int]):
    chip, tolerance_um = shared
    return scan_row_groups(chip.transcripts, groups, chip.extent_um(), tolerance_um)


# -- prepare: a plugin's chip-wide work reaches tiles through these ------------------------------
def apply_to_tile(ctx: RunContext, _worker, job: tuple) -> object:
    """``fn(tile)``, for a nuclei backend's prepare (it reads its own window)."""
    fn, index = job
    return fn(ctx.grid[index])


def apply_to_tile_data(ctx: RunContext, _worker, job: tuple) -> object:
    """``fn(TileData)``, for a cell method's prepare (global nuclei painted in)."""
    fn, index = job
    data, _ = tile_data(ctx, ctx.grid[index])
    return fn(data)


# -- pass 1: nuclei --------------------------------------------------------------------------
def nuclei_tile(ctx: RunContext, backend: NucleiBackend, tile: Tile) -> dict:
    t0 = time.perf_counter()
    labels = backend.segment(tile)
    owned = owned_objects(labels, tile, ctx.grid.shape)
    ctx.work.save_npz(NUCLEI, tile.index, owned.to_npz())
    return {
        "index": tile.index,
        "n": len(owned),
        "n_clipped": owned.n_clipped,
        "seconds": time.perf_counter() - t0,
        "worker": backend.describe(),
    }


def load_owned(work: WorkDir, stage: str, index: int) -> OwnedObjects:
    """A tile's owned objects; a tile that failed contributes none (the run is then incomplete)."""
    try:
        return OwnedObjects.from_npz(work.load_npz(stage, index))
    except FileNotFoundError:
        return _empty(index)


def load_moments(
    work: WorkDir, stage: str, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = load_owned(work, stage, index)
    return o.area, o.sum_r, o.sum_c


def paint_global_labels(
    ctx: RunContext, stage: str, tables: list[np.ndarray], tile: Tile
) -> np.ndarray:
    """The global IDs of one stage's objects (nuclei or seeds) painted over the tile's window,
    from every neighbour that owns some.
    """
    parts = []
    for other in ctx.grid.neighbours(tile):
        obj = load_owned(ctx.work, stage, other.index)
        parts.append((obj, tables[other.index]))
    return paint_window(tile.window, parts)


def tile_data(ctx: RunContext, tile: Tile, with_image: bool = True) -> tuple[TileData, pa.Table]:
    nuclei = paint_global_labels(ctx, NUCLEI, ctx.nuclei_tables, tile)
    seeds = (
        paint_global_labels(ctx, SEEDS, ctx.seed_tables, tile)
        if ctx.seed_tables is not None
        else None
    )
    return load_tile_data(ctx.chip, tile, ctx.genes, nuclei, seeds, with_image)


# -- pass 2 (optional): seeds of cells without a nucleus ---------------------------------------
def seeds_tile(ctx: RunContext, method: CellMethod, tile: Tile) -> dict:
    t0 = time.perf_counter()
    data, _ = tile_data(ctx, tile)
    seeds = method.find_seeds(data)
    if seeds is None:
        seeds = np.zeros(data.shape, np.uint32)
    seeds = np.where(data.nuclei > 0, 0, seeds)  # a seed never covers a nucleus
    owned = owned_objects(seeds, tile, ctx.grid.shape)
    ctx.work.save_npz(SEEDS, tile.index, owned.to_npz())
    return {"index": tile.index, "n": len(owned), "seconds": time.perf_counter() - t0}


# -- pass 3: cells, labels, assignment -------------------------------------------------------
def cells_tile(ctx: RunContext, method: CellMethod, tile: Tile) -> dict:
    """The method's result for one tile, persisted: the core's labels, its owned transcripts with
    their cells, the outlines of the cells and nuclei in its core
    (:func:`~stseg_dist.boundaries.core_outlines`: traced here, from the labels in hand, in
    parallel like the rest) and its partial sums (:class:`~stseg_dist.partials.CellPartials`),
    saved last: they mark the tile done.
    """
    t0 = time.perf_counter()
    data, table = tile_data(ctx, tile, with_image=method.uses_image)
    result = as_result(method.segment(data)).resolve(data, method.name)
    moved = None
    if ctx.config.cells.spillover.active(ctx.config):
        from .spillover import reassign

        tx = data.transcripts
        cell_id, moved = reassign(
            result.labels,
            data.nuclei,
            data.seeds,
            tx.row,
            tx.col,
            tx.gene,
            result.cell_id,
            len(ctx.genes),
            data.pixel_size_um,
            ctx.config.cells.spillover,
            ctx.config.cells.spillover.reach(ctx.config),
            ctx.spillover_state,
        )
        result = replace(result, cell_id=cell_id)

    core = tile.core_in_window
    cells_core, nuclei_core = result.labels[core], data.nuclei[core]
    write_label_core(ctx.labels_url, tile, cells_core, nuclei_core, ctx.work.so)

    own = data.transcripts.in_core  # each transcript is owned by the core holding its pixel
    cell_id, in_nucleus = result.cell_id[own], result.in_nucleus[own]
    ctx.work.save_table(
        ctx.stage(TRANSCRIPTS),
        tile.index,
        assigned_table(
            table.filter(pa.array(own)), cell_id, in_nucleus, None if moved is None else moved[own]
        ),
    )
    origin = (tile.core[0], tile.core[2])
    ctx.work.save_table(
        ctx.stage(CORE_OUTLINES),
        tile.index,
        core_outlines(cells_core, nuclei_core, origin, ctx.chip.pixel_size_um, ctx.chip.origin_um),
    )
    gene = data.transcripts.gene[own]
    partials = CellPartials.compute(cells_core, nuclei_core, origin, cell_id, gene, len(ctx.genes))
    partials.seconds = time.perf_counter() - t0
    ctx.work.save_npz(ctx.stage(CELLS), tile.index, partials.to_npz())
    return {
        "index": tile.index,
        "n_transcripts": partials.n_transcripts,
        "n_assigned": partials.n_assigned,
        "n_cells": partials.n_cells,
        "seconds": partials.seconds,
    }


def as_result(value: TileResult | np.ndarray) -> TileResult:
    """A method's return value as a :class:`TileResult`; a bare label image (a plugin written
    against the former API) is :meth:`TileResult.from_labels`.
    """
    return value if isinstance(value, TileResult) else TileResult.from_labels(value)


# -- pass 4: boundaries of the cells each tile owns ------------------------------------------
def boundaries_tile(ctx: RunContext, _worker, job: BoundaryJob) -> dict:
    """Outlines of the cells (and their nuclei) whose centroid lies in ``job``'s tile core."""
    t0 = time.perf_counter()
    return {**vectorise_owned(ctx, job), "seconds": time.perf_counter() - t0}


# -- the SpatialData store's points, one partition per tile -----------------------------------
@dataclass(frozen=True)
class PointsJob:
    """One tile's transcripts as partition ``part`` of the store's points, rows from ``start``."""

    index: int
    part: int
    start: int
    folder: str


def points_tile(ctx: RunContext, _worker, job: PointsJob) -> dict:
    """The tile's transcripts part (as the cells pass wrote it) into the store's points."""
    from .export.spatialdata import points_part

    t0 = time.perf_counter()
    n = points_part(
        ctx.work.tile_url(ctx.stage(TRANSCRIPTS), job.index, "parquet"),
        f"{job.folder}/part.{job.part}.parquet",
        job.start,
        ctx.genes,
        ctx.work.so,
    )
    return {"index": job.index, "n": n, "seconds": time.perf_counter() - t0}


def raster_block(ctx: RunContext, _worker, job) -> dict:
    """One block of one of the store's rasters, every pyramid level of it
    (:func:`export.spatialdata.write_block`).
    """
    from .export.spatialdata import write_block

    t0 = time.perf_counter()
    out = write_block(job, ctx.chip)
    return {**out, "seconds": time.perf_counter() - t0}


def assigned_table(
    owned: pa.Table, cell_id: np.ndarray, in_nucleus: np.ndarray, moved: np.ndarray | None = None
) -> pa.Table:
    """A tile's owned input rows with ``input_row``, ``cell_id`` and ``in_nucleus`` (replacing any
    input column of those names) and a ``transcript_id`` (the input row where the input has none);
    with ``moved``, also which transcripts the spillover pass moved.
    """
    out = owned
    if K.TRANSCRIPT_ID not in out.column_names:
        out = out.append_column(K.TRANSCRIPT_ID, out.column(ROW))
    rows = out.column(ROW)
    out = out.drop_columns([ROW])
    for name in (K.INPUT_ROW, K.CELL_ID, K.IN_NUCLEUS, K.SPILLOVER_MOVED):
        if name in out.column_names:  # an input column of that name is replaced, not duplicated
            out = out.drop_columns([name])
    out = out.append_column(K.INPUT_ROW, rows)  # unique even where input transcript_ids are not
    out = out.append_column(K.CELL_ID, pa.array(cell_id, pa.int64()))
    out = out.append_column(K.IN_NUCLEUS, pa.array(in_nucleus))
    if moved is not None:
        out = out.append_column(K.SPILLOVER_MOVED, pa.array(np.asarray(moved, bool)))
    return out


def write_label_core(
    labels_url: str, tile: Tile, cells: np.ndarray, nuclei: np.ndarray, storage_options: dict
) -> None:
    rows, cols = tile.core_slices
    for name, arr in ((K.LABELS_CELLS, cells), (K.LABELS_NUCLEI, nuclei)):
        z = storage.open_zarr_array(storage.join(labels_url, name), "r+", storage_options)
        z[rows, cols] = arr

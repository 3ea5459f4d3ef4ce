"""Cell and nucleus boundaries: exact pixel outlines in µm, written as GeoParquet.

The outlines come out of the cells kernel, which holds its core's labels anyway: it traces every
cell and nucleus with pixels in its core (:func:`core_outlines`), with each one's pixel count
there. A cell whose core count is its whole area (the cell table's), and whose nucleus likewise
lies wholly in that core, is taken from there as it is: the same pixels give the same outline
wherever they are traced. A cell cut by core edges is joined from its pieces in the cores that
hold them (:func:`joined_outlines`): the union of pixel-aligned pieces whose shared edges have
the same coordinates, with collinear vertices dropped, is the outline of the whole cell, vertex
for vertex (the traced outlines are tested equal to the union of pixel runs, and the joined ones
to the labels re-read). No label raster is read again.

Each cell is outlined once, by the tile whose core holds its centroid pixel (the cell table's
exact integer moments, so the owner does not depend on the tiling); the driver tells it which
other tiles hold pieces of its cells. Only where the pieces do not add up to the cell table's
counts (a checkpoint from before the kernel traced them) is a cell vectorised from the global
label arrays: over the owner's window, or a window grown around a cell of which it holds fewer
pixels than the cell table counts, so the owner always sees it whole. The outline is the union
of the cell's pixel runs (shapely), so a polygon's area is exactly the cell's pixel area and a
cell has the same polygon whatever the tile size. A cell whose pixels are not 4-connected is one
MultiPolygon: one geometry per cell, nothing dropped. A nucleus is outlined by its cell's
owner (a nucleus lies inside its cell and shares its ID).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from . import constants as K
from .io import storage
from .tiling import Tile, TileGrid

STAGES = {
    K.CELL_BOUNDARIES_PARQUET: "boundaries-cells",
    K.NUCLEUS_BOUNDARIES_PARQUET: "boundaries-nuclei",
}
#: Work-dir stage of the outlines the cells kernel traced in its core (:func:`core_outlines`).
CORE_OUTLINES = "outlines"
NUCLEUS = "nucleus"  # core_outlines' column: the row is a nucleus (else a cell)
N_PX = "n_px"  # core_outlines' column: the object's pixels in that core
_PART_META = (
    b"stseg_part"  # per-part bbox and geometry types, so the final file's metadata needs no re-read
)


@dataclass(frozen=True)
class BoundaryJob:
    """One tile's share: the cells whose centroid pixel lies in its core, their pixel areas,
    their nuclei's pixel counts over the whole chip (None: not known, every cell re-read) and the
    other tiles whose core outlines hold pieces of them.
    """

    index: int
    cell_ids: np.ndarray
    areas: np.ndarray
    nucleus_px: np.ndarray | None = None
    sources: tuple[int, ...] = ()  # other tiles whose cores hold pieces of these cells or nuclei


def pixel_runs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of equal non-zero labels: (label, row, first col, end col exclusive)."""
    lab = np.asarray(lab)
    h, w = lab.shape
    if lab.size == 0:
        z = np.zeros(0, np.int64)
        return z.astype(lab.dtype), z, z, z
    start = np.ones((h, w), bool)
    start[:, 1:] = lab[:, 1:] != lab[:, :-1]
    end = np.ones((h, w), bool)
    end[:, :-1] = lab[:, :-1] != lab[:, 1:]
    fg = lab > 0
    rows, c0 = np.nonzero(start & fg)
    _, c_last = np.nonzero(end & fg)  # row-major order: the i-th end closes the i-th start
    return lab[rows, c0], rows, c0, c_last + 1


def label_polygons(
    lab: np.ndarray,
    ids: np.ndarray,
    offset_rc: tuple[int, int],
    pixel_size_um: float,
    origin_um: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Outlines (in µm) of the labels ``ids`` present in ``lab``, whose pixel (0, 0) is global
    pixel ``offset_rc``; returns (sorted ids found, geometries).

    Traced from the label raster's pixel edges (:func:`traced_outlines`); a cell whose pixels are
    not one 4-connected piece, or touch themselves at a corner, is the union of its pixel runs
    (:func:`union_outlines`, the reference both are tested against). Geometries are normalised
    (shapely.normalize), so the same pixels always give the same bytes.
    """
    found, geoms, rest = traced_outlines(lab, ids)
    if len(rest):
        more, extra = union_outlines(lab, rest)
        found, geoms = np.concatenate([found, more]), np.concatenate([geoms, extra])
        order = np.argsort(found, kind="stable")
        found, geoms = found[order], geoms[order]
    if len(found) == 0:
        return np.zeros(0, np.int64), np.empty(0, object)
    ps = float(pixel_size_um)
    shift = np.array([offset_rc[1], offset_rc[0]], float)
    x0, y0 = float(origin_um[0]), float(origin_um[1])
    geoms = shapely.transform(geoms, lambda xy: (xy + shift) * ps + np.array([x0, y0]))
    return found.astype(np.int64), shapely.normalize(geoms)


def core_outlines(
    cells_core: np.ndarray,
    nuclei_core: np.ndarray,
    core_rc: tuple[int, int],
    pixel_size_um: float,
    origin_um: tuple[float, float],
) -> pa.Table:
    """Every cell and nucleus with pixels in a tile core, outlined from the core's labels (whose
    pixel (0, 0) is global pixel ``core_rc``) by the cells kernel, which holds them: ``cell_id``,
    ``nucleus``, ``n_px`` (its pixels in this core) and the WKB ``geometry``.

    An object whose ``n_px`` is its whole pixel count lies wholly in this core, so its outline
    here is the one a window over the global labels gives (:func:`label_polygons` depends on the
    object's pixels only); the boundaries pass keeps those and re-reads the rest.
    """
    ids_parts, nuc_parts, n_parts, geom_parts = [], [], [], []
    for is_nucleus, lab in ((False, cells_core), (True, nuclei_core)):
        val, _, c0, c1 = pixel_runs(lab)
        ids, inv = np.unique(val, return_inverse=True)
        n_px = np.bincount(inv, weights=c1 - c0, minlength=len(ids)).astype(np.int64)
        found, geoms = label_polygons(lab, ids, core_rc, pixel_size_um, origin_um)
        if not np.array_equal(found, ids):  # every label present is outlined
            raise RuntimeError("core outlines: a label in the core was not outlined")
        ids_parts.append(found)
        nuc_parts.append(np.full(len(found), is_nucleus))
        n_parts.append(n_px)
        geom_parts.append(geoms)
    return pa.table(
        {
            K.CELL_ID: pa.array(np.concatenate(ids_parts), pa.int64()),
            NUCLEUS: pa.array(np.concatenate(nuc_parts), pa.bool_()),
            N_PX: pa.array(np.concatenate(n_parts), pa.int64()),
            "geometry": pa.array(shapely.to_wkb(np.concatenate(geom_parts)), pa.binary()),
        }
    )


@dataclass(frozen=True)
class CorePieces:
    """Where the cells kernel outlined pieces of each cell and nucleus: one row per piece (its
    tile, ``cell_id``, whether a nucleus), and per cell of the table its nucleus' pixels on the
    chip (summed over cores).
    """

    tile: np.ndarray
    cell_id: np.ndarray
    nucleus_px: np.ndarray


def core_pieces(ctx, tiles: list[int], ids: np.ndarray) -> CorePieces | None:
    """The pieces the cells kernel outlined in the cores of ``tiles`` (:class:`CorePieces`) and
    each nucleus ``ids``' pixel count; None when a tile has none (a checkpoint from before they
    were written).
    """
    stage = ctx.stage(CORE_OUTLINES)
    have = ctx.work.done(stage, "parquet")
    if not set(tiles) <= have:
        return None
    tile, cid, nid, npx = [], [], [], []
    for i in tiles:
        fs, path = storage.fs_and_path(ctx.work.tile_url(stage, i, "parquet"), ctx.work.so)
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=[K.CELL_ID, NUCLEUS, N_PX])
        c = t.column(K.CELL_ID).to_numpy()
        keep = t.column(NUCLEUS).to_numpy(zero_copy_only=False)
        tile.append(np.full(len(c), i, np.int64))
        cid.append(c)
        nid.append(c[keep])
        npx.append(t.column(N_PX).to_numpy()[keep])
    ids = np.asarray(ids, np.int64)
    empty = np.zeros(0, np.int64)
    cat = lambda parts: np.concatenate(parts) if parts else empty  # noqa: E731
    nid_all, inv = np.unique(cat(nid), return_inverse=True)
    total = np.bincount(inv, weights=cat(npx), minlength=len(nid_all)).astype(np.int64)
    pos, hit = _find_sorted(nid_all, ids)
    return CorePieces(
        cat(tile), cat(cid), np.where(hit, total[pos] if len(nid_all) else 0, 0).astype(np.int64)
    )


def _find_sorted(srt: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position in the sorted ``srt`` of each of ``ids`` (clipped into range) and whether it is
    there.
    """
    pos = np.clip(np.searchsorted(srt, ids), 0, max(len(srt) - 1, 0))
    hit = (srt[pos] == ids) if len(srt) else np.zeros(len(ids), bool)
    return pos, hit


def union_outlines(lab: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outlines of ``ids`` in ``lab`` in its pixel coordinates: the union of each label's pixel
    runs (exact but slow: a GEOS overlay per cell).
    """
    val, rows, c0, c1 = pixel_runs(lab)
    keep = np.isin(val, ids)
    val, rows, c0, c1 = val[keep], rows[keep], c0[keep], c1[keep]
    if len(val) == 0:
        return np.zeros(0, np.int64), np.empty(0, object)
    order = np.argsort(val, kind="stable")
    val, rows, c0, c1 = val[order], rows[order], c0[order], c1[order]
    boxes = shapely.box(c0, rows, c1, rows + 1)
    found, first = np.unique(val, return_index=True)
    geoms = np.array([shapely.union_all(g) for g in np.split(boxes, first[1:])], dtype=object)
    return found.astype(np.int64), shapely.simplify(geoms, 0.0)  # drops collinear vertices


def traced_outlines(lab: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outlines of ``ids`` in ``lab`` in its pixel coordinates, traced along pixel edges for all
    cells at once (numpy; no overlay): (ids traced, polygons, ids left to :func:`union_outlines`).

    Every pixel edge between a cell and anything else is a directed unit edge with the cell on
    its right; each edge's successor starts where it ends, so the edges form rings (found by
    pointer jumping, ordered by list ranking). A ring of positive area is a shell, of negative
    area a hole. Cells with one shell become a Polygon with their holes; a cell with two shells
    or a corner where two of its edges start (pixels touching diagonally) is left to the union.
    """
    lab = np.asarray(lab)
    empty = np.zeros(0, np.int64)
    uniq = np.r_[0, np.unique(np.asarray(ids, np.int64))]  # compact id k is label uniq[k]
    k = np.searchsorted(uniq, lab)  # no sort of the window's pixels
    k[k == len(uniq)] = 0
    cid = np.pad(np.where(uniq[k] == lab, k, 0), 1)  # 0: not a label of ids
    if not cid.any():
        return empty, np.empty(0, object), empty
    h, w = cid.shape
    hr, hc = np.nonzero(cid[1:, :] != cid[:-1, :])
    hr += 1  # a horizontal edge at the top of row hr
    vr, vc = np.nonzero(cid[:, 1:] != cid[:, :-1])
    vc += 1  # a vertical edge at the left of column vc
    below, above, right, left = cid[hr, hc], cid[hr - 1, hc], cid[vr, vc], cid[vr, vc - 1]
    parts = [  # (cell, x0, y0, x1, y1), the cell on the right (y down)
        (below, hc, hr, hc + 1, hr),
        (above, hc + 1, hr, hc, hr),
        (right, vc, vr + 1, vc, vr),
        (left, vc, vr, vc, vr + 1),
    ]
    masks = [p[0] > 0 for p in parts]
    cell, x0, y0, x1, y1 = (
        np.concatenate([p[k][m] for p, m in zip(parts, masks, strict=True)]) for k in range(5)
    )
    n = len(cell)
    start = (cell * (h + 1) + y0) * (w + 1) + x0
    end = (cell * (h + 1) + y1) * (w + 1) + x1
    order = np.argsort(start, kind="stable")
    start_sorted = start[order]
    fallback = np.zeros(len(uniq), bool)
    fallback[cell[order][1:][start_sorted[1:] == start_sorted[:-1]]] = True  # corner touch
    succ = order[np.searchsorted(start_sorted, end)]
    idx = np.arange(n)
    steps = int(np.ceil(np.log2(max(n, 2)))) + 1
    ring, nxt = idx.copy(), succ.copy()
    for _ in range(steps):  # each edge's ring: the smallest edge index on its cycle
        ring = np.minimum(ring, ring[nxt])
        nxt = nxt[nxt]
    last = succ == ring  # the edge that closes its ring
    nxt = np.where(last, idx, succ)
    rank = (~last).astype(np.int64)
    for _ in range(steps):  # list ranking: edges from the ring's first
        rank = rank + rank[nxt]
        nxt = nxt[nxt]
    o = np.lexsort((-rank, ring))
    ring, cell, xs, ys = ring[o], cell[o], x0[o], y0[o]
    dx, dy = x1[o] - xs, y1[o] - ys
    first = np.r_[True, ring[1:] != ring[:-1]]
    starts = np.flatnonzero(first)
    prev = idx - 1
    prev[starts] = np.r_[starts[1:], n] - 1
    corner = (dx != dx[prev]) | (dy != dy[prev])  # collinear vertices dropped
    ring_k = np.cumsum(first) - 1
    shell = np.bincount(ring_k, weights=xs * (ys + dy) - (xs + dx) * ys) > 0  # shoelace
    ring_cell = cell[starts]
    fallback |= np.bincount(ring_cell[shell], minlength=len(uniq)) != 1
    fallback &= np.bincount(cell, minlength=len(uniq)) > 0  # only labels present in the window
    ok = np.flatnonzero(~fallback[ring_cell])
    ok = ok[np.lexsort((~shell[ok], ring_cell[ok]))]  # per cell: its shell, then its holes
    slot = np.full(len(starts), -1)
    slot[ok] = np.arange(len(ok))
    keep = corner & (slot[ring_k] >= 0)
    vring = slot[ring_k[keep]]
    vo = np.argsort(vring, kind="stable")
    coords = np.stack([xs[keep][vo], ys[keep][vo]], 1).astype(float) - 1.0  # unpad
    rings = shapely.linearrings(coords, indices=vring[vo])
    traced, which = np.unique(ring_cell[ok], return_inverse=True)
    polys = shapely.polygons(rings, indices=which)
    rest = uniq[np.flatnonzero(fallback)]
    return uniq[traced].astype(np.int64), np.asarray(polys, dtype=object), rest.astype(np.int64)


def owner_jobs(
    grid: TileGrid,
    ids: np.ndarray,
    area: np.ndarray,
    sum_r: np.ndarray,
    sum_c: np.ndarray,
    pieces: CorePieces | None = None,
) -> list[BoundaryJob]:
    """Split cells among tiles by the core holding their centroid pixel (exact integer moments);
    with ``pieces``, each job gets its nuclei's pixel counts and the other tiles holding pieces
    of its cells or nuclei.
    """
    ids = np.asarray(ids, np.int64)
    safe = np.maximum(np.asarray(area, np.int64), 1)
    cy = np.asarray(sum_r, np.int64) // safe
    cx = np.asarray(sum_c, np.int64) // safe
    tile = (np.clip(cy, 0, grid.shape[0] - 1) // grid.core_px) * grid.n_cols + np.clip(
        cx, 0, grid.shape[1] - 1
    ) // grid.core_px
    order = np.lexsort((ids, tile))
    tiles, first = np.unique(tile[order], return_index=True)

    def per_tile(values) -> dict:
        return dict(
            zip(
                tiles.tolist(),
                np.split(np.asarray(values, np.int64)[order], first[1:]),
                strict=False,
            )
        )

    per_ids, per_area = per_tile(ids), per_tile(area)
    per_nuc = None if pieces is None else per_tile(pieces.nucleus_px)
    sources: dict[int, tuple[int, ...]] = {}
    if pieces is not None and len(ids):
        srt = np.argsort(ids, kind="stable")
        pos, hit = _find_sorted(ids[srt], pieces.cell_id)
        owner = np.where(hit, tile[srt][pos], -1)  # -1: a piece of no cell in the table
        away = hit & (owner != pieces.tile)
        pairs = np.unique(np.stack([owner[away], pieces.tile[away]], 1), axis=0)
        for o, t in pairs.tolist():
            sources[o] = (*sources.get(o, ()), t)
    empty = np.zeros(0, np.int64)
    return [
        BoundaryJob(
            t.index,
            per_ids.get(t.index, empty),
            per_area.get(t.index, empty),
            None if per_nuc is None else per_nuc.get(t.index, empty),
            sources.get(t.index, ()),
        )
        for t in grid
    ]


def _read(url: str, window: tuple[int, int, int, int], so: dict) -> np.ndarray:
    r0, r1, c0, c1 = window
    return np.asarray(storage.open_zarr_array(url, "r", so)[r0:r1, c0:c1])


def _extent(lab: np.ndarray, ids: np.ndarray) -> dict[int, tuple[int, int, int, int, int]]:
    """Per label in ``ids`` found in ``lab``: (pixels, r0, r1, c0, c1) from its pixel runs."""
    val, rows, c0, c1 = pixel_runs(lab)
    keep = np.isin(val, ids)
    val, rows, c0, c1 = val[keep], rows[keep], c0[keep], c1[keep]
    if len(val) == 0:
        return {}
    order = np.argsort(val, kind="stable")
    val, rows, c0, c1 = val[order], rows[order], c0[order], c1[order]
    found, first = np.unique(val, return_index=True)
    return {
        int(i): (int(n), int(a), int(b) + 1, int(c), int(d))
        for i, n, a, b, c, d in zip(
            found,
            np.add.reduceat(c1 - c0, first),
            np.minimum.reduceat(rows, first),
            np.maximum.reduceat(rows, first),
            np.minimum.reduceat(c0, first),
            np.maximum.reduceat(c1, first),
            strict=True,
        )
    }


def whole_windows(
    cells_url: str, tile: Tile, job: BoundaryJob, shape: tuple[int, int], grow_px: int, so: dict
) -> list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
    """(window, cell ids, the cell labels there) such that each window holds all pixels of its
    cells: the tile window for most cells; for a cell of which it holds fewer pixels than the
    cell table counts (cut at the window edge, or in pieces), a window grown around it until it
    holds them all.
    """
    window = tile.window
    lab = _read(cells_url, window, so)
    found = _extent(lab, job.cell_ids)
    expected = dict(zip(job.cell_ids.tolist(), job.areas.tolist(), strict=False))
    short = [i for i in job.cell_ids.tolist() if found.get(i, (0,))[0] < expected[i]]
    out = [(window, np.setdiff1d(job.cell_ids, np.asarray(short, np.int64)), lab)]
    for cid in short:
        _, r0, r1, c0, c1 = found.get(cid, (0, 0, window[1] - window[0], 0, window[3] - window[2]))
        win = (window[0] + r0, window[0] + r1, window[2] + c0, window[2] + c1)
        grow = max(int(grow_px), 1)
        while True:
            win = (
                max(0, win[0] - grow),
                min(shape[0], win[1] + grow),
                max(0, win[2] - grow),
                min(shape[1], win[3] + grow),
            )
            grown = _read(cells_url, win, so)
            n = _extent(grown, np.asarray([cid])).get(cid, (0,))[0]
            if n >= expected[cid] or win == (0, shape[0], 0, shape[1]):
                break
            grow *= 2
        out.append((win, np.asarray([cid], np.int64), grown))
    return out


def outlines_in_window(
    lab: np.ndarray,
    ids: np.ndarray,
    window: tuple[int, int, int, int],
    pixel_size_um: float,
    origin_um: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_polygons` of ``ids`` in ``lab`` (the labels over ``window``), traced in the
    bounding box of the cells nearest each side of the window: the cells re-read lie along the
    core's edges, so they cost four strips of pixels, not the window. Same outlines: an outline
    depends on its label's pixels only, and each strip holds all of its cells' pixels.
    """
    ext = _extent(lab, ids)
    if not ext:
        return np.zeros(0, np.int64), np.empty(0, object)
    cid = np.fromiter(ext, np.int64, len(ext))
    box = np.array([v[1:] for v in ext.values()], np.int64)  # r0, r1, c0, c1
    h, w = lab.shape
    side = np.argmin(np.stack([box[:, 0], h - box[:, 1], box[:, 2], w - box[:, 3]], 1), 1)
    id_parts, geom_parts = [], []
    for s in np.unique(side):
        b = box[side == s]
        r0, r1, c0, c1 = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
        got, geoms = label_polygons(
            lab[r0:r1, c0:c1],
            cid[side == s],
            (window[0] + r0, window[2] + c0),
            pixel_size_um,
            origin_um,
        )
        id_parts.append(got)
        geom_parts.append(geoms)
    ids_out, geoms_out = np.concatenate(id_parts), np.concatenate(geom_parts)
    order = np.argsort(ids_out, kind="stable")
    return ids_out[order], geoms_out[order]


def read_pieces(ctx, job: BoundaryJob) -> pa.Table | None:
    """The core outlines of ``job``'s cells and nuclei: every row of its own tile's and those
    of its cells in the tiles of ``job.sources``; None where a tile wrote none.
    """
    stage = ctx.stage(CORE_OUTLINES)
    parts = []
    for i in (job.index, *job.sources):
        url = ctx.work.tile_url(stage, i, "parquet")
        if not storage.exists(url, ctx.work.so):
            return None
        fs, path = storage.fs_and_path(url, ctx.work.so)
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh)
        if i != job.index:
            t = t.filter(pc.is_in(t.column(K.CELL_ID), pa.array(job.cell_ids, pa.int64())))
        parts.append(t.replace_schema_metadata(None))
    return pa.concat_tables(parts)


def join_pieces(geoms: np.ndarray) -> object:
    """One outline from the pixel-aligned pieces of one object in several cores: their union
    (shared edges have identical coordinates: the same global pixel corners, transformed alike),
    collinear vertices dropped and normalised, as :func:`label_polygons` gives the whole object.
    """
    return shapely.normalize(shapely.simplify(shapely.union_all(geoms), 0.0))


def joined_outlines(pieces: pa.Table, job: BoundaryJob) -> tuple[np.ndarray, np.ndarray, dict]:
    """The outlines of ``job``'s cells (and nuclei) from their core pieces: (ids outlined, how
    many of those came whole from one core, per output file its (ids, geometries)). A cell is
    outlined here only when its pieces add up to its area and its nucleus' pieces to its
    nucleus' pixels; the rest are left to a re-read of the labels.
    """
    cid = pieces.column(K.CELL_ID).to_numpy()
    is_nuc = pieces.column(NUCLEUS).to_numpy(zero_copy_only=False)
    n_px = pieces.column(N_PX).to_numpy()
    wkb = pieces.column("geometry").to_numpy(zero_copy_only=False)
    ok = np.ones(len(job.cell_ids), bool)
    groups = {}
    for name, mask, expected in (
        (K.CELL_BOUNDARIES_PARQUET, ~is_nuc, job.areas),
        (K.NUCLEUS_BOUNDARIES_PARQUET, is_nuc, job.nucleus_px),
    ):
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(cid[rows], kind="stable")]
        uniq, first, count = np.unique(cid[rows], return_index=True, return_counts=True)
        total = np.add.reduceat(n_px[rows], first) if len(rows) else np.zeros(0, np.int64)
        pos, hit = _find_sorted(uniq, job.cell_ids)
        ok &= np.where(hit, total[pos] if len(uniq) else 0, 0) == expected
        groups[name] = (rows, uniq, first, count)
    ids = job.cell_ids[ok]
    out, n_whole = {}, 0
    for name, (rows, uniq, first, count) in groups.items():
        keep = np.flatnonzero(np.isin(uniq, ids))
        one = count[keep] == 1  # whole in one core: its outline as traced
        geoms = np.empty(len(keep), object)
        geoms[one] = shapely.from_wkb(wkb[rows[first[keep[one]]]])
        for k in np.flatnonzero(~one):
            f, n = first[keep[k]], count[keep[k]]
            geoms[k] = join_pieces(shapely.from_wkb(wkb[rows[f : f + n]]))
        out[name] = (uniq[keep].astype(np.int64), geoms)
        if name == K.CELL_BOUNDARIES_PARQUET:
            n_whole = int(one.sum())
    return ids, n_whole, out


def vectorise_owned(ctx, job: BoundaryJob) -> dict:
    """The outlines of the cells (and their nuclei) that ``job``'s tile owns: from the cells
    kernel's core outlines (whole, or joined from their pieces), any others vectorised from the
    global labels; one part each.
    """
    tile = ctx.grid[job.index]
    so = ctx.work.so
    cells_url = storage.join(ctx.labels_url, K.LABELS_CELLS)
    nuclei_url = storage.join(ctx.labels_url, K.LABELS_NUCLEI)
    ps, origin = ctx.chip.pixel_size_um, ctx.chip.origin_um
    empty = np.zeros(0, np.int64), np.empty(0, object)
    pieces = None
    if job.nucleus_px is not None and len(job.cell_ids):
        pieces = read_pieces(ctx, job)
    if pieces is None:
        done, n_whole, joined = np.zeros(0, np.int64), 0, dict.fromkeys(STAGES, empty)
    else:
        done, n_whole, joined = joined_outlines(pieces, job)
    found = {name: ([joined[name][0]], [joined[name][1]]) for name in STAGES}
    rest = ~np.isin(job.cell_ids, done)
    job_rest = replace(
        job,
        cell_ids=job.cell_ids[rest],
        areas=job.areas[rest],
        nucleus_px=None if job.nucleus_px is None else job.nucleus_px[rest],
    )
    n_grown = 0
    if len(job_rest.cell_ids):
        windows = whole_windows(
            cells_url, tile, job_rest, ctx.grid.shape, ctx.grid.halo_px or ctx.grid.core_px, so
        )
        n_grown = len(windows) - 1
        for win, ids, cells_lab in windows:
            for name, lab in (
                (K.CELL_BOUNDARIES_PARQUET, cells_lab),
                (K.NUCLEUS_BOUNDARIES_PARQUET, _read(nuclei_url, win, so)),
            ):
                got_ids, geoms = outlines_in_window(lab, ids, win, ps, origin)
                found[name][0].append(got_ids)
                found[name][1].append(geoms)
    counts = {}
    for name, (id_parts, geom_parts) in found.items():
        ids = np.concatenate(id_parts)
        geoms = np.concatenate(geom_parts)
        order = np.argsort(ids, kind="stable")
        table = _table(ids[order], geoms[order])
        ctx.work.save_table(ctx.stage(STAGES[name]), job.index, table)
        counts[name] = len(ids)
    return {
        "index": job.index,
        "n_cells": counts[K.CELL_BOUNDARIES_PARQUET],
        "n_nuclei": counts[K.NUCLEUS_BOUNDARIES_PARQUET],
        "n_from_kernel": n_whole,
        "n_joined": len(done) - n_whole,
        "n_re_read": int(rest.sum()),
        "n_grown": n_grown,
    }


def _table(ids: np.ndarray, geoms: np.ndarray) -> pa.Table:
    types = sorted(set(shapely.get_type_id(geoms).tolist()))
    bounds = shapely.total_bounds(geoms) if len(geoms) else np.full(4, np.nan)
    meta = {"types": [_TYPE_NAMES[t] for t in types], "bbox": [float(v) for v in bounds]}
    return pa.table(
        {
            K.CELL_ID: pa.array(ids, pa.int64()),
            "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        },
        metadata={_PART_META: json.dumps(meta).encode()},
    )


_TYPE_NAMES = {3: "Polygon", 6: "MultiPolygon"}


_MICROMETRE = {"type": "LinearUnit", "name": "micrometre", "conversion_factor": 1e-6}
#: The chip's coordinates as a CRS (PROJJSON): an engineering CRS, x east and y down the image,
#: in micrometres. GeoParquet readers (geopandas: ``gdf.crs``) then know the unit; no map
#: projection is implied.
CHIP_CRS = {
    "$schema": "https://proj.org/schemas/v0.7/projjson.schema.json",
    "type": "EngineeringCRS",
    "name": "stseg chip coordinates (µm)",
    "datum": {"type": "EngineeringDatum", "name": "chip origin"},
    "coordinate_system": {
        "subtype": "Cartesian",
        "axis": [
            {"name": "x", "abbreviation": "x", "direction": "east", "unit": _MICROMETRE},
            {"name": "y", "abbreviation": "y", "direction": "south", "unit": _MICROMETRE},
        ],
    },
}


def geo_metadata(types: list[str], bbox: list[float] | None) -> dict:
    """GeoParquet 1.1 file metadata for one WKB column in the chip's µm (``CHIP_CRS``)."""
    col = {"encoding": "WKB", "geometry_types": sorted(types), "crs": CHIP_CRS, "edges": "planar"}
    if bbox is not None:
        col["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}


def concat_geoparquet(
    part_urls: list[str], url: str, so: dict, extra_meta: dict | None = None
) -> int:
    """Stream per-tile parts into one GeoParquet file; the metadata comes from the parts'
    footers.
    """
    types: set[str] = set()
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for part in part_urls:
        fs, path = storage.fs_and_path(part, so)
        with fs.open(path, "rb") as fh:
            meta = json.loads(pq.read_schema(fh).metadata[_PART_META])
        types.update(meta["types"])
        if meta["types"]:
            lo = np.minimum(lo, meta["bbox"][:2])
            hi = np.maximum(hi, meta["bbox"][2:])
    bbox = (
        [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])] if np.isfinite(lo).all() else None
    )
    schema = pa.schema(
        [(K.CELL_ID, pa.int64()), ("geometry", pa.binary())],
        metadata={
            b"geo": json.dumps(geo_metadata(sorted(types), bbox)).encode(),
            **({b"stseg": json.dumps(extra_meta).encode()} if extra_meta else {}),
        },
    )
    fs, path = storage.fs_and_path(url, so)
    n = 0
    with fs.open(path, "wb") as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        for part in part_urls:
            pfs, ppath = storage.fs_and_path(part, so)
            with pfs.open(ppath, "rb") as ph:
                table = pq.read_table(ph)
            if table.num_rows:
                writer.write_table(table.replace_schema_metadata(None).cast(schema))
                n += table.num_rows
    return n


def boundaries_done(ctx) -> set[int]:
    """Tiles whose both boundary parts were written before (a resume skips them)."""
    return set.intersection(*(ctx.work.done(ctx.stage(s), "parquet") for s in STAGES.values()))


def concat_boundaries(ctx, staging_url: str) -> None:
    """Both GeoParquet files into ``staging_url``, from every finished tile's parts."""
    meta = {
        "units": "um",
        "pixel_size_um": ctx.chip.pixel_size_um,
        "origin_um": list(ctx.chip.origin_um),
    }
    for name, stage in STAGES.items():
        finished = sorted(ctx.work.done(ctx.stage(stage), "parquet"))
        concat_geoparquet(
            [ctx.work.tile_url(ctx.stage(stage), i, "parquet") for i in finished],
            storage.join(staging_url, name),
            ctx.work.so,
            meta,
        )


def read_boundaries(url: str, so: dict | None = None):
    """A boundaries GeoParquet file as a pandas Series of shapely geometries indexed by cell_id
    (pyarrow and shapely only, so exports need no geopandas).
    """
    import pandas as pd

    fs, path = storage.fs_and_path(url, so)
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=[K.CELL_ID, "geometry"])
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    return pd.Series(
        geoms, index=pd.Index(table.column(K.CELL_ID).to_numpy(), name=K.CELL_ID), name="geometry"
    )

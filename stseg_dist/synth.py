"""Generated chips with ground truth, written block by block so any size fits in memory.

Cells sit on a jittered lattice whose every property (presence, type, shape, nucleus, brightness)
comes from a counter-based hash of (seed, lattice index), so any block can recompute its
neighbours' cells exactly, and the chip is seamless and identical whatever order blocks are
written in. Per block: cell territories (shape-weighted nearest cell, so touching cells do not
overlap), nuclei smaller than and off-centre in their cells (a few invisible in the stain),
transcripts drawn from each cell type's gene program with nuclear/cytoplasmic preference and
diffusion across borders, background transcripts, and a DAPI image with chromatin texture, blur,
uneven illumination and noise (plus an optional membrane channel).

Real tissue is harder than the defaults, and the ``hard`` preset (``HARD``) says how: gaps
where no cell sits (``occupancy``), expression that varies smoothly across the tissue
(``expression_cv``, a log-normal field over ~60 µm), cytoplasm much sparser than the nucleus
(``cytoplasm_keep``) and more free RNA between cells (``background_fraction``).
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage as ndi

from . import constants as K
from .errors import ConfigError
from .io import storage
from .io.chip_writer import ChipWriter

TRUTH_CELLS_PARQUET = "truth/cells.parquet"

#: Generator settings closer to real tissue (CosMx lung: ~30% of transcripts outside cells,
#: uneven expression, sparse cytoplasm), for benchmarks that should not flatter density methods.
HARD = {"occupancy": 0.7, "expression_cv": 0.6, "cytoplasm_keep": 0.5, "background_fraction": 0.2}
FIELD_UM = 60.0  # length scale of the expression field
#: Track lines (Stereo-seq): the chip's fiducial grid, lines of missing DNBs, so no transcripts
#: on them, and dark lines in the stain. The gaps between lines repeat a template that is not a
#: palindrome and differs between x and y, so a flipped or quarter-turned stain can be told apart.
TRACK_GAPS_UM = (
    (22.0, 34.0, 26.0, 40.0, 30.0),
    (36.0, 24.0, 44.0, 28.0),
)  # (x: between vertical lines, y)
TRACK_PHASE_UM = 7.0  # the first line of each direction
TRACK_WIDTH_UM = 1.5
TRACK_DIM = 0.7  # share of the stain lost on a track line
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic U[0, 1) per key tuple: the same cell gets the same draw in every block."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt))
        for k in keys:
            h = _mix(
                h
                ^ (np.asarray(k).astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))
            )
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Programs:
    """Gene programs: each cell type over-expresses its markers on top of shared housekeeping."""

    def __init__(self, n_genes: int, n_types: int, seed: int):
        rng = np.random.default_rng([seed, 7])
        self.genes = [f"Gene{i:03d}" for i in range(n_genes)]
        base = rng.gamma(0.6, 1.0, n_genes) + 0.05
        profiles = np.tile(base, (n_types, 1))
        per_type = max(2, n_genes // (n_types + 1))
        order = rng.permutation(n_genes)
        for t in range(n_types):
            markers = order[t * per_type : (t + 1) * per_type]
            profiles[t, markers] += rng.uniform(6.0, 14.0, len(markers))
        self.cdf = np.cumsum(profiles / profiles.sum(axis=1, keepdims=True), axis=1)
        bg = np.ones(n_genes)
        self.bg_cdf = np.cumsum(bg / bg.sum())
        self.nuclear = rng.uniform(0.1, 0.5, n_genes)  # chance a transcript of the gene is nuclear

    def draw(self, types: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = np.empty(len(types), np.int32)
        for t in np.unique(types):
            sel = types == t
            out[sel] = np.minimum(np.searchsorted(self.cdf[t], u[sel]), len(self.genes) - 1)
        return out


class _Lattice:
    """Cell centres on a jittered square lattice with global integer indices."""

    def __init__(self, spacing_um: float, width_um: float, height_um: float):
        self.s = spacing_um
        self.ni = int(math.ceil(height_um / spacing_um)) + 1
        self.nj = int(math.ceil(width_um / spacing_um)) + 1

    def indices_in(self, x0, x1, y0, y1):
        i0, i1 = (
            max(0, int(math.floor(y0 / self.s)) - 1),
            min(self.ni, int(math.ceil(y1 / self.s)) + 1),
        )
        j0, j1 = (
            max(0, int(math.floor(x0 / self.s)) - 1),
            min(self.nj, int(math.ceil(x1 / self.s)) + 1),
        )
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        return ii.ravel(), jj.ravel()


def _field(seed: int, x: np.ndarray, y: np.ndarray, cv: float) -> np.ndarray:
    """A smooth log-normal field (mean 1) at (x, y) µm: hashed normals on a FIELD_UM lattice,
    bilinear.
    """
    if cv <= 0:
        return np.ones(len(x))
    fx, fy = np.asarray(x) / FIELD_UM, np.asarray(y) / FIELD_UM
    i0, j0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - i0, fx - j0
    z = np.zeros(len(fx))
    for di, dj, wgt in (
        (0, 0, (1 - ty) * (1 - tx)),
        (0, 1, (1 - ty) * tx),
        (1, 0, ty * (1 - tx)),
        (1, 1, ty * tx),
    ):
        u1, u2 = _uniform(seed, 21, i0 + di, j0 + dj), _uniform(seed, 22, i0 + di, j0 + dj)
        z += (
            wgt * np.sqrt(-2 * np.log(np.maximum(u1, 1e-12))) * np.cos(2 * np.pi * u2)
        )  # Box-Muller
    sigma = np.sqrt(np.log(1 + cv**2))
    return np.exp(sigma * z - sigma**2 / 2)


def _track_distance(v: np.ndarray, gaps) -> np.ndarray:
    """µm from each coordinate to the nearest track line of one direction."""
    pos = np.concatenate([[0.0], np.cumsum(gaps)])  # a period, both ends included
    m = np.mod(np.asarray(v, np.float64) - TRACK_PHASE_UM, pos[-1])
    return np.abs(m[..., None] - pos).min(axis=-1)


def on_track_line(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """True where a point lies on a track line (no DNB there, so no transcript)."""
    half = TRACK_WIDTH_UM / 2
    return (_track_distance(x_um, TRACK_GAPS_UM[0]) < half) | (
        _track_distance(y_um, TRACK_GAPS_UM[1]) < half
    )


def stain_matrix(params: dict, shape: tuple[int, int], ps: float) -> np.ndarray:
    """3x3 matrix from transcript-frame pixels (x = col, y = row) to stain pixels: mirror columns
    (``flip``), scale, rotate by ``rotation_deg`` about the chip centre, then shift by ``shift_um``
    (dx, dy).
    """
    unknown = set(params) - {"scale", "rotation_deg", "flip", "shift_um"}
    if unknown:
        raise ConfigError(
            f"synth: stain_transform has unknown keys {sorted(unknown)} "
            "(scale, rotation_deg, flip, shift_um)"
        )
    scale, angle = params.get("scale", 1.0), params.get("rotation_deg", 0.0)
    _check("stain_transform.scale", scale)
    _check("stain_transform.rotation_deg", angle, positive=False)
    dx, dy = (float(v) / ps for v in params.get("shift_um", (0.0, 0.0)))
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]]) * [
        [scale],
        [scale],
        [1],
    ]
    flip = np.diag([-1.0 if params.get("flip", False) else 1.0, 1.0, 1.0])
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, cx + dx], [0, 1, cy + dy], [0, 0, 1]], np.float64)
    return back @ rot @ flip @ to_centre


def _cells(
    seed,
    lattice,
    ii,
    jj,
    width_um,
    height_um,
    n_types,
    cell_radius_um,
    occupancy=0.9,
    expression_cv=0.0,
):
    """All properties of the cells at lattice points (ii, jj), as a dict of arrays."""
    s = lattice.s
    u = lambda salt: _uniform(seed, salt, ii, jj)  # noqa: E731
    cx = (jj + 0.5 + (u(1) - 0.5) * 0.7) * s
    cy = (ii + 0.5 + (u(2) - 0.5) * 0.7) * s
    keep = (u(3) < occupancy) & (cx >= 0) & (cx < width_um) & (cy >= 0) & (cy < height_um)
    elongated = u(4) < 0.25
    aspect = np.where(elongated, 2.0 + 1.5 * u(5), 1.0 + 0.25 * u(5))
    cell_type = np.minimum((u(11) * n_types).astype(np.int32), n_types - 1)
    # cell types differ in size (as neurons and glia do), and cells vary within a type
    type_scale = np.linspace(0.65, 1.35, n_types)[
        np.argsort(_uniform(seed, 15, np.arange(n_types)))
    ]
    radius = cell_radius_um * type_scale[cell_type] * (0.85 + 0.3 * u(6))
    a = radius * np.sqrt(aspect)  # semi-major, µm (area as a circle of `radius`)
    b = radius / np.sqrt(aspect)
    theta = np.pi * u(7)
    nfrac = 0.35 + 0.25 * u(8)
    off_r = 0.3 * b * u(9)
    off_t = 2 * np.pi * u(10)
    out = {
        "cell_id": (ii * lattice.nj + jj + 1).astype(np.int64),
        "x": cx,
        "y": cy,
        "a": a,
        "b": b,
        "theta": theta,
        "cell_type": cell_type,
        "elongated": elongated,
        "nx": cx + off_r * np.cos(off_t),
        "ny": cy + off_r * np.sin(off_t),
        "na": a * nfrac,
        "nb": b * nfrac,
        "visible": u(12) >= 0.04,
        "brightness": 0.6 + 0.8 * u(13),
        "n_tx_scale": (0.7 + 0.6 * u(14)) * _field(seed, cx, cy, expression_cv),
    }
    return {k: v[keep] for k, v in out.items()}


def _ellipse_dist(px, py, cx, cy, a, b, theta):
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = px - cx, py - cy
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    return np.sqrt(u * u + v * v)


def _ellipse_window(cx, cy, a, b, theta, r0, c0, h, w, ps):
    """Window slices around an ellipse and the normalised distance of each pixel centre in them."""
    rr0, rr1 = max(0, int((cy - a) / ps) - r0 - 1), min(h, int((cy + a) / ps) - r0 + 2)
    cc0, cc1 = max(0, int((cx - a) / ps) - c0 - 1), min(w, int((cx + a) / ps) - c0 + 2)
    if rr0 >= rr1 or cc0 >= cc1:
        return None, None
    py = (np.arange(rr0, rr1) + r0 + 0.5)[:, None] * ps
    px = (np.arange(cc0, cc1) + c0 + 0.5)[None, :] * ps
    return np.s_[rr0:rr1, cc0:cc1], _ellipse_dist(px, py, cx, cy, a, b, theta)


def _render_labels(cells, r0, c0, h, w, ps):
    """Cell and nucleus labels over a pixel window (row r0, col c0, shape h x w).

    A pixel joins the cell whose ellipse-normalised distance is smallest (and <= 1), so
    neighbouring cells split their overlap along a shape-aware border instead of overlapping.
    """
    best = np.full((h, w), 1.0, np.float64)
    cell_lab = np.zeros((h, w), np.uint32)
    nuc_lab = np.zeros((h, w), np.uint32)
    nuc_vis = np.zeros((h, w), np.uint32)
    for k, cid in enumerate(cells["cell_id"]):
        win, d = _ellipse_window(
            cells["x"][k],
            cells["y"][k],
            cells["a"][k],
            cells["b"][k],
            cells["theta"][k],
            r0,
            c0,
            h,
            w,
            ps,
        )
        if win is None:
            continue
        sub = best[win]
        closer = d < sub
        sub[closer] = d[closer]
        cell_lab[win][closer] = cid
    for k, cid in enumerate(cells["cell_id"]):
        win, d = _ellipse_window(
            cells["nx"][k],
            cells["ny"][k],
            cells["na"][k],
            cells["nb"][k],
            cells["theta"][k],
            r0,
            c0,
            h,
            w,
            ps,
        )
        if win is None:
            continue
        inside = (d <= 1.0) & (cell_lab[win] == cid)
        nuc_lab[win][inside] = cid
        if cells["visible"][k]:
            nuc_vis[win][inside] = cid
    return cell_lab, nuc_lab, nuc_vis


def _render_dapi(nuc_vis, cells, r0, c0, seed, ps, rng):
    h, w = nuc_vis.shape
    rows = np.arange(r0, r0 + h)[:, None]
    cols = np.arange(c0, c0 + w)[None, :]
    # chromatin texture: hashed white noise of the global pixel, smoothed (seamless across blocks)
    noise = _uniform(seed, 101, rows + np.zeros_like(cols), cols + np.zeros_like(rows))
    texture = 0.7 + 0.6 * ndi.gaussian_filter(noise, 1.0 / ps * 0.4)
    bright = np.zeros(int(nuc_vis.max()) + 1 if nuc_vis.size else 1)
    idx = cells["cell_id"]
    if len(idx):
        bright = np.zeros(int(max(idx.max(), nuc_vis.max())) + 1)
        bright[idx] = cells["brightness"]
    signal = np.where(nuc_vis > 0, bright[nuc_vis] * texture, 0.0)
    signal = ndi.gaussian_filter(signal, 0.6 / ps)
    # uneven illumination: a smooth field of global coordinates
    yum, xum = rows * ps, cols * ps
    illum = 0.75 + 0.25 * np.sin(xum / 900.0 + 0.3 * seed) * np.cos(yum / 700.0)
    img = 120.0 + 2600.0 * signal * illum
    img = rng.poisson(np.maximum(img, 0) / 4.0) * 4.0 + rng.normal(0, 15, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _render_membrane(cell_lab, ps, rng):
    img = _membrane_signal(cell_lab, ps) + rng.normal(0, 20, cell_lab.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _membrane_signal(cell_lab, ps):
    """The membrane stain before camera noise: cell borders, blurred."""
    edge = np.zeros(cell_lab.shape, bool)
    edge[:-1] |= cell_lab[:-1] != cell_lab[1:]
    edge[1:] |= cell_lab[:-1] != cell_lab[1:]
    edge[:, :-1] |= cell_lab[:, :-1] != cell_lab[:, 1:]
    edge[:, 1:] |= cell_lab[:, :-1] != cell_lab[:, 1:]
    sig = ndi.gaussian_filter(edge.astype(np.float64), 0.5 / ps)
    return 100.0 + 2000.0 * sig


def _transcripts(
    cells,
    cell_lab,
    nuc_lab,
    r0,
    c0,
    ps,
    programs,
    tx_per_cell,
    bg_fraction,
    rng,
    block_box,
    diffusion_um=0.8,
    cytoplasm_keep=1.0,
):
    """Transcripts of the cells owned by this block, plus background in the block's box."""
    h, w = cell_lab.shape
    flat = cell_lab.ravel()
    nflat = nuc_lab.ravel()
    owned = cells["cell_id"]
    xs, ys, gs, cs = [], [], [], []
    if len(owned):
        # pixel lists per owned cell, split into nuclear and cytoplasmic pixels
        order = np.argsort(flat, kind="stable")
        sorted_ids = flat[order]
        lo = np.searchsorted(sorted_ids, owned, "left")
        hi = np.searchsorted(sorted_ids, owned, "right")
        area = hi - lo
        n = rng.poisson(
            tx_per_cell * cells["n_tx_scale"] * np.maximum(area, 1) / max(np.median(area), 1)
        )
        n = np.where(area > 0, n, 0)
        which = np.repeat(np.arange(len(owned)), n)
        types = cells["cell_type"][which]
        genes = programs.draw(types, rng.random(len(which)))
        want_nuc = rng.random(len(which)) < programs.nuclear[genes]
        pick = lo[which] + (rng.random(len(which)) * area[which]).astype(np.int64)
        pix = order[np.minimum(pick, len(order) - 1)]
        # redraw until nuclear transcripts sit on the nucleus and the others on the cytoplasm
        # (rejection, a few tries: cells whose nucleus is tiny keep what they drew)
        for _ in range(4):
            miss = want_nuc != (nflat[pix] == owned[which])
            if not miss.any():
                break
            pick = lo[which[miss]] + (rng.random(miss.sum()) * area[which[miss]]).astype(np.int64)
            pix[miss] = order[np.minimum(pick, len(order) - 1)]
        if (
            cytoplasm_keep < 1
        ):  # sparse cytoplasm: thin the transcripts that did not land on the nucleus
            kept = (nflat[pix] == owned[which]) | (rng.random(len(pix)) < cytoplasm_keep)
            pix, which, genes = pix[kept], which[kept], genes[kept]
        pr, pc = np.divmod(pix, w)
        xs.append((c0 + pc + rng.random(len(pix))) * ps + rng.normal(0, diffusion_um, len(pix)))
        ys.append((r0 + pr + rng.random(len(pix))) * ps + rng.normal(0, diffusion_um, len(pix)))
        gs.append(genes)
        cs.append(owned[which])
    bx0, bx1, by0, by1 = block_box
    n_cell_tx = sum(len(g) for g in gs)
    n_bg = rng.poisson(n_cell_tx * bg_fraction / (1 - bg_fraction)) if n_cell_tx else 0
    xs.append(rng.uniform(bx0, bx1, n_bg))
    ys.append(rng.uniform(by0, by1, n_bg))
    gs.append(
        np.minimum(
            np.searchsorted(programs.bg_cdf, rng.random(n_bg)), len(programs.genes) - 1
        ).astype(np.int32)
    )
    cs.append(np.zeros(n_bg, np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), np.concatenate(cs)


def _check(name, value, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"synth: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"synth: {name} must be positive, got {value!r}")


def synth_chip(
    out: str,
    width_um: float,
    height_um: float,
    seed: int = 0,
    *,
    pixel_size_um: float = 0.5,
    platform: str = "synthetic",
    cell_density_per_mm2: float = 4000.0,
    transcripts_per_cell: float = 150.0,
    n_genes: int = 60,
    n_cell_types: int = 5,
    background_fraction: float = 0.07,
    occupancy: float = 0.9,
    expression_cv: float = 0.0,
    cytoplasm_keep: float = 1.0,
    membrane: bool = False,
    vendor_nuclei: bool = False,
    track_lines: bool = False,
    stain_transform: dict | None = None,
    block_um: float = 256.0,
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a generated chip with truth to ``out`` and return a summary of what was written.

    The chip is generated block by block (each block's cells from a lattice hashed by position,
    rendered with a margin), so any size streams through bounded memory. ``track_lines`` draws the
    chip's track-line grid (:data:`TRACK_GAPS_UM`) into the expression map (no transcripts on a
    line) and the membrane stain (dark lines). ``stain_transform`` (keys ``scale``,
    ``rotation_deg``, ``flip``, ``shift_um``; needs ``membrane``) writes the membrane stain under
    that similarity transform of the transcripts' frame (:func:`stain_matrix`, recorded in
    chip.json under ``synthetic.stain_transform.matrix``); the nuclear stain stays in the
    transcripts' frame.
    """
    t0 = time.perf_counter()
    _check_synth_args(
        width_um,
        height_um,
        seed,
        pixel_size_um,
        cell_density_per_mm2,
        transcripts_per_cell,
        n_genes,
        n_cell_types,
        background_fraction,
        occupancy,
        expression_cv,
        cytoplasm_keep,
        block_um,
    )
    ps = float(pixel_size_um)
    H, W = int(math.ceil(height_um / ps)), int(math.ceil(width_um / ps))
    if stain_transform is not None and not membrane:
        raise ConfigError(
            "synth: stain_transform transforms the membrane stain; it needs membrane=True"
        )
    matrix = None if stain_transform is None else stain_matrix(dict(stain_transform), (H, W), ps)
    block_px = max(16, int(round(block_um / ps)))
    spacing = 1000.0 / math.sqrt(cell_density_per_mm2)  # µm between lattice points
    cell_radius = 0.62 * spacing  # ellipses overlap; territories split them
    margin_um = cell_radius * 2.2 + 3.0
    gene_type = pa.dictionary(pa.int32(), pa.string())
    schema = pa.schema(
        [
            (K.X, pa.float64()),
            (K.Y, pa.float64()),
            (K.Z, pa.float32()),
            (K.GENE, gene_type),
            (K.QV, pa.float32()),
            (K.TRANSCRIPT_ID, pa.int64()),
            (K.CELL_TRUE, pa.int64()),
        ]
    )
    gen = _Generator(
        seed,
        ps,
        H,
        W,
        block_px,
        margin_um,
        int(math.ceil(margin_um / ps)),
        cell_radius,
        _Lattice(spacing, W * ps, H * ps),
        _Programs(n_genes, n_cell_types, seed),
        schema,
        n_cell_types,
        occupancy,
        expression_cv,
        transcripts_per_cell,
        background_fraction,
        cytoplasm_keep,
        membrane,
        vendor_nuclei,
        bool(track_lines),
        None if matrix is None else tuple(map(tuple, matrix.tolist())),
    )
    extra = {K.TRUTH_CELLS_ZARR: K.LABEL_DTYPE, K.TRUTH_NUCLEI_ZARR: K.LABEL_DTYPE}
    shape = (2, H, W) if membrane else (H, W)
    truth_rows = []
    n_tx = n_bg = 0
    with ChipWriter(
        out,
        shape,
        ps,
        platform=platform,
        chunk_px=block_px,
        with_nuclei=vendor_nuclei,
        extra_arrays=extra,
        transcript_schema=schema,
        overwrite=overwrite,
        storage_options=storage_options,
        meta_extra={
            "synthetic": {
                "seed": seed,
                "cell_density_per_mm2": cell_density_per_mm2,
                "transcripts_per_cell": transcripts_per_cell,
                "background_fraction": background_fraction,
                "occupancy": occupancy,
                "expression_cv": expression_cv,
                "cytoplasm_keep": cytoplasm_keep,
                **_stain_meta(track_lines, stain_transform, matrix),
            }
        },
    ) as wr:
        n_bc = math.ceil(W / block_px)
        for bi in range(math.ceil(H / block_px)):
            for bj in range(n_bc):
                n, n_block_bg, rows = gen.write_block(wr, bi, bj, bi * n_bc + bj)
                n_tx += n
                n_bg += n_block_bg
                truth_rows.append(rows)
        truth = pd.concat(truth_rows, ignore_index=True) if truth_rows else pd.DataFrame()
        fs, path = storage.fs_and_path(storage.join(str(out), TRUTH_CELLS_PARQUET), storage_options)
        with fs.open(path, "wb") as fh:
            truth.to_parquet(fh, index=False)
    return {
        "out": str(out),
        "shape": [H, W],
        "pixel_size_um": ps,
        "n_cells": int(len(truth)),
        "n_transcripts": int(n_tx),
        "n_background": int(n_bg),
        "n_missing_nucleus": int((~truth["has_visible_nucleus"]).sum()) if len(truth) else 0,
        "n_genes": n_genes,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _stain_meta(track_lines: bool, params: dict | None, matrix: np.ndarray | None) -> dict:
    """chip.json facts of the track lines and the stain transform (only when asked for, so other
    chips are written as before).
    """
    out = {}
    if track_lines:
        out["track_lines"] = {
            "gaps_um": [list(g) for g in TRACK_GAPS_UM],
            "phase_um": TRACK_PHASE_UM,
            "width_um": TRACK_WIDTH_UM,
        }
    if params is not None:
        out["stain_transform"] = {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
            "matrix": matrix.tolist(),
        }
    return out


def _check_synth_args(
    width_um,
    height_um,
    seed,
    pixel_size_um,
    cell_density_per_mm2,
    transcripts_per_cell,
    n_genes,
    n_cell_types,
    background_fraction,
    occupancy,
    expression_cv,
    cytoplasm_keep,
    block_um,
) -> None:
    for name, value in (
        ("width_um", width_um),
        ("height_um", height_um),
        ("pixel_size_um", pixel_size_um),
        ("cell_density_per_mm2", cell_density_per_mm2),
        ("transcripts_per_cell", transcripts_per_cell),
        ("block_um", block_um),
    ):
        _check(name, value)
    if not isinstance(n_genes, int) or n_genes < 2:
        raise ConfigError(f"synth: n_genes must be an integer >= 2, got {n_genes!r}")
    if not isinstance(n_cell_types, int) or not 1 <= n_cell_types <= n_genes:
        raise ConfigError(
            f"synth: n_cell_types must be an integer in 1..n_genes, got {n_cell_types!r}"
        )
    if not 0 <= background_fraction < 1:
        raise ConfigError(
            f"synth: background_fraction must be in [0, 1), got {background_fraction!r}"
        )
    for name, value in (("occupancy", occupancy), ("cytoplasm_keep", cytoplasm_keep)):
        _check(name, value)
        if value > 1:
            raise ConfigError(f"synth: {name} must be in (0, 1], got {value!r}")
    _check("expression_cv", expression_cv, positive=False)
    if expression_cv < 0:
        raise ConfigError(f"synth: expression_cv must not be negative, got {expression_cv!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synth: seed must be a non-negative integer, got {seed!r}")


@dataclass(frozen=True)
class _Generator:
    """The chip-wide facts one block needs (every block is generated from these alone)."""

    seed: int
    ps: float
    H: int
    W: int
    block_px: int
    margin_um: float
    margin: int  # px rendered around a block so its cells are whole
    cell_radius: float
    lattice: _Lattice
    programs: _Programs
    schema: pa.Schema
    n_cell_types: int
    occupancy: float
    expression_cv: float
    transcripts_per_cell: float
    background_fraction: float
    cytoplasm_keep: float
    membrane: bool
    vendor_nuclei: bool
    track_lines: bool = False
    stain: tuple | None = None  # 3x3 transcript px -> stain px (None: the same frame)

    def write_block(self, wr, bi: int, bj: int, block_index: int) -> tuple[int, int, pd.DataFrame]:
        """Render block (bi, bj) and write its pixels and the transcripts of the cells it owns;
        returns (transcripts, background transcripts, truth rows of its cells).
        """
        ps, H, W, margin, margin_um = self.ps, self.H, self.W, self.margin, self.margin_um
        r0, c0 = bi * self.block_px, bj * self.block_px
        r1, c1 = min(H, r0 + self.block_px), min(W, c0 + self.block_px)
        wr0, wc0 = max(0, r0 - margin), max(0, c0 - margin)
        wr1, wc1 = min(H, r1 + margin), min(W, c1 + margin)
        box = (c0 * ps, c1 * ps, r0 * ps, r1 * ps)
        ii, jj = self.lattice.indices_in(
            wc0 * ps - margin_um, wc1 * ps + margin_um, wr0 * ps - margin_um, wr1 * ps + margin_um
        )
        cells = _cells(
            self.seed,
            self.lattice,
            ii,
            jj,
            W * ps,
            H * ps,
            self.n_cell_types,
            self.cell_radius,
            self.occupancy,
            self.expression_cv,
        )
        cell_lab, nuc_lab, nuc_vis = _render_labels(cells, wr0, wc0, wr1 - wr0, wc1 - wc0, ps)
        rng = np.random.default_rng([self.seed, bi, bj])
        dapi = _render_dapi(nuc_vis, cells, wr0, wc0, self.seed, ps, rng)
        core = np.s_[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0]
        if self.membrane:
            wr.write_image(np.s_[0, r0:r1, c0:c1], dapi[core])
            stain = (
                self._stain(r0, r1, c0, c1, rng)
                if self.track_lines or self.stain is not None
                else _render_membrane(cell_lab, ps, rng)[core]
            )
            wr.write_image(np.s_[1, r0:r1, c0:c1], stain)
        else:
            wr.write_image(np.s_[r0:r1, c0:c1], dapi[core])
        wr.write_array(K.TRUTH_CELLS_ZARR, np.s_[r0:r1, c0:c1], cell_lab[core])
        wr.write_array(K.TRUTH_NUCLEI_ZARR, np.s_[r0:r1, c0:c1], nuc_vis[core])
        if self.vendor_nuclei:
            wr.write_array(K.NUCLEI_ZARR, np.s_[r0:r1, c0:c1], nuc_vis[core])

        own = (
            (cells["x"] >= box[0])
            & (cells["x"] < box[1])
            & (cells["y"] >= box[2])
            & (cells["y"] < box[3])
        )
        mine = {k: v[own] for k, v in cells.items()}
        x, y, g, c = _transcripts(
            mine,
            cell_lab,
            nuc_lab,
            wr0,
            wc0,
            ps,
            self.programs,
            self.transcripts_per_cell,
            self.background_fraction,
            rng,
            box,
            cytoplasm_keep=self.cytoplasm_keep,
        )
        x = np.clip(x, 0.0, W * ps - 1e-6)
        y = np.clip(y, 0.0, H * ps - 1e-6)
        if self.track_lines:  # no DNB on a track line, so no transcript
            keep = ~on_track_line(x, y)
            x, y, g, c = x[keep], y[keep], g[keep], c[keep]
        o = np.lexsort((x, y))
        n = len(o)
        gene_dict = pa.array(self.programs.genes, pa.string())
        table = pa.table(
            {
                K.X: x[o],
                K.Y: y[o],
                K.Z: rng.uniform(0, 10, n).astype(np.float32),
                K.GENE: pa.DictionaryArray.from_arrays(pa.array(g[o], pa.int32()), gene_dict),
                K.QV: np.minimum(20 + rng.exponential(8, n), 40).astype(np.float32),
                K.TRANSCRIPT_ID: (np.int64(block_index) << 32) + np.arange(n, dtype=np.int64),
                K.CELL_TRUE: c[o],
            },
            schema=self.schema,
        )
        wr.write_transcripts(table, row_group_size=max(n, 1))
        areas = _areas(cell_lab, mine["cell_id"]) * ps * ps
        truth = pd.DataFrame(
            {
                "cell_id": mine["cell_id"],
                "x": mine["x"],
                "y": mine["y"],
                "cell_type": mine["cell_type"],
                "has_visible_nucleus": mine["visible"],
                "area_um2": areas,
                "elongated": mine["elongated"],
            }
        )
        return n, int((c == 0).sum()), truth

    def _stain(self, r0: int, r1: int, c0: int, c1: int, rng) -> np.ndarray:
        """Membrane stain rows r0:r1, cols c0:c1 of the stain's frame: the transcript frame's stain
        before noise (track lines dimmed) seen through the stain transform, then camera noise.
        """
        H, W = self.H, self.W
        inv = np.linalg.inv(
            np.asarray(self.stain if self.stain is not None else np.eye(3), np.float64)
        )
        rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        sx = inv[0, 0] * cc + inv[0, 1] * rr + inv[0, 2]
        sy = inv[1, 0] * cc + inv[1, 1] * rr + inv[1, 2]
        clean = np.full(rr.shape, 100.0)  # no tissue beyond the transcripts' frame
        wr0, wr1 = max(0, int(np.floor(sy.min())) - 2), min(H, int(np.ceil(sy.max())) + 3)
        wc0, wc1 = max(0, int(np.floor(sx.min())) - 2), min(W, int(np.ceil(sx.max())) + 3)
        if wr0 < wr1 and wc0 < wc1:
            src = self._clean_stain(wr0, wr1, wc0, wc1)
            vals = ndi.map_coordinates(src, [sy - wr0, sx - wc0], order=1, mode="nearest")
            inside = (sy >= -0.5) & (sy <= H - 0.5) & (sx >= -0.5) & (sx <= W - 0.5)
            clean = np.where(inside, vals, clean)
        return np.clip(clean + rng.normal(0, 20, clean.shape), 0, 65535).astype(np.uint16)

    def _clean_stain(self, wr0: int, wr1: int, wc0: int, wc1: int) -> np.ndarray:
        """The membrane stain before noise over transcript-frame pixels wr0:wr1, wc0:wc1."""
        ps, H, W, m, m_um = self.ps, self.H, self.W, self.margin, self.margin_um
        mr0, mr1, mc0, mc1 = max(0, wr0 - m), min(H, wr1 + m), max(0, wc0 - m), min(W, wc1 + m)
        ii, jj = self.lattice.indices_in(
            mc0 * ps - m_um, mc1 * ps + m_um, mr0 * ps - m_um, mr1 * ps + m_um
        )
        cells = _cells(
            self.seed,
            self.lattice,
            ii,
            jj,
            W * ps,
            H * ps,
            self.n_cell_types,
            self.cell_radius,
            self.occupancy,
            self.expression_cv,
        )
        cell_lab, _, _ = _render_labels(cells, mr0, mc0, mr1 - mr0, mc1 - mc0, ps)
        sig = _membrane_signal(cell_lab, ps)[wr0 - mr0 : wr1 - mr0, wc0 - mc0 : wc1 - mc0]
        if self.track_lines:
            d = np.minimum(
                _track_distance((np.arange(wr0, wr1) + 0.5) * ps, TRACK_GAPS_UM[1])[:, None],
                _track_distance((np.arange(wc0, wc1) + 0.5) * ps, TRACK_GAPS_UM[0])[None, :],
            )
            sig = sig * (1 - TRACK_DIM * np.clip((TRACK_WIDTH_UM / 2 - d) / ps + 0.5, 0, 1))
        return sig


def _areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel area of each id within the rendered window (cells are whole inside it)."""
    if not len(ids):
        return np.zeros(0)
    flat = np.sort(labels.ravel())
    return (np.searchsorted(flat, ids, "right") - np.searchsorted(flat, ids, "left")).astype(
        np.float64
    )

"""SSL-CST spot features and self-supervised labels, every one a function of global coordinates.

Spots are the bins of the chip-anchored grid the learned methods share
(``methods/common/bins.py``), so every tile window sees the same spots, and a tile owns the
spots whose centre pixel lies in its core (``BinGrid.owned``). A spot is described to the
encoder by the ``k x k`` spots around it (its tokens); each token carries the counts of the
chip's top genes plus the all-gene total, and the nucleus-position prior ``exp(-d / d0)`` of its
distance ``d`` to the nearest nucleus centroid (0 beyond ``d_max``, so a nucleus seen only
partly at a window edge can never change a feature the tile keeps). The token's position
normalised within the neighbourhood is added by the model itself.

Centroids come from exact integer pixel moments and distances from global µm coordinates, so
the features of a spot are bitwise identical in every window that holds its neighbourhood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..base import TileData
from ..common.bins import BinnedTile, bin_tile
from ..common.ownership import nucleus_centroids

IGNORE = -100


@dataclass
class SpotGrid:
    """One tile window on the spot grid with what the encoder reads."""

    binned: BinnedTile
    counts: np.ndarray  # (H, W, G + 1) float32: top-gene counts, then the all-gene total
    prior: np.ndarray  # (H, W) float32: exp(-d / d0) to the nearest nucleus centroid
    centroids: dict[int, tuple[float, float]]  # global nucleus ID -> (y, x) µm from the chip origin
    radii: dict[int, float] = None  # global nucleus ID -> equivalent radius sqrt(area / pi) in µm

    @property
    def shape(self) -> tuple[int, int]:
        return self.binned.shape

    def spot_um(
        self, rows: np.ndarray, cols: np.ndarray, bin_um: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Centres (y, x) in µm from the chip origin of window spots (rows, cols)."""
        return (
            (np.asarray(rows) + self.binned.origin[0] + 0.5) * bin_um,
            (np.asarray(cols) + self.binned.origin[1] + 0.5) * bin_um,
        )


def spot_grid(
    data: TileData, bin_um: float, top_genes: np.ndarray, d0_um: float, d_max_um: float
) -> SpotGrid:
    """Bin a tile window into spots with counts of ``top_genes`` (chip gene indices) and the
    prior.
    """
    binned = bin_tile(data, bin_um)
    h, w = binned.shape
    slot = np.full(max(len(data.genes), int(binned.genes.max(initial=0)) + 1), -1, np.int64)
    slot[np.asarray(top_genes, np.int64)] = np.arange(len(top_genes))
    g = len(top_genes) + 1
    flat = (binned.rows * w + binned.cols) * g
    counts = np.bincount(flat + g - 1, minlength=h * w * g).astype(np.float32)
    s = slot[binned.genes]
    counts += np.bincount(flat[s >= 0] + s[s >= 0], minlength=h * w * g).astype(np.float32)
    counts = counts.reshape(h, w, g)

    ids, cr, cc = nucleus_centroids(data.nuclei, (data.tile.window[0], data.tile.window[2]))
    ps = data.pixel_size_um
    cy, cx = (cr + 0.5) * ps, (cc + 0.5) * ps
    centroids = {int(i): (float(y), float(x)) for i, y, x in zip(ids, cy, cx, strict=False)}
    flat = data.nuclei.ravel()
    uid, area = np.unique(flat[flat > 0], return_counts=True)
    radii = {int(i): float(np.sqrt(a / np.pi) * ps) for i, a in zip(uid, area, strict=True)}
    grid = SpotGrid(binned, counts, np.zeros((h, w), np.float32), centroids, radii)
    if len(ids) and h and w:
        rr, cc2 = np.mgrid[:h, :w]
        sy, sx = grid.spot_um(rr.ravel(), cc2.ravel(), bin_um)
        d, _ = cKDTree(np.column_stack([cy, cx])).query(
            np.column_stack([sy, sx]), distance_upper_bound=d_max_um
        )
        grid.prior = (
            np.where(np.isfinite(d), np.exp(-d / d0_um), 0.0).astype(np.float32).reshape(h, w)
        )
    return grid


def neighbourhood_offsets(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the k x k tokens, row-major
    (the centre token is index k*k // 2).
    """
    half = k // 2
    dr, dc = np.mgrid[-half : half + 1, -half : half + 1]
    return dr.ravel(), dc.ravel()


def gather_tokens(
    grid: SpotGrid, rows: np.ndarray, cols: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token counts (N, k*k, G+1) and priors (N, k*k) of spots (rows, cols); zeros off the
    window.
    """
    half = k // 2
    counts = np.pad(grid.counts, ((half, half), (half, half), (0, 0)))
    prior = np.pad(grid.prior, half)
    dr, dc = neighbourhood_offsets(k)
    r = np.asarray(rows)[:, None] + half + dr[None, :]
    c = np.asarray(cols)[:, None] + half + dc[None, :]
    return counts[r, c], prior[r, c]


def direction_class(
    dy: np.ndarray, dx: np.ndarray, n_directions: int, floor: bool = False
) -> np.ndarray:
    """The nearest of ``n_directions`` directions, class j at angle 2*pi*j/n from +x towards +y;
    with ``floor`` (the paper) class j is the bin [2*pi*j/n, 2*pi*(j+1)/n).
    """
    a = np.arctan2(dy, dx) / (2 * np.pi / n_directions)
    return np.mod((np.floor(a) if floor else np.round(a)).astype(np.int64), n_directions)


def unit_steps(n_directions: int, centre: bool = False) -> np.ndarray:
    """(n, 2) unit steps (dy, dx) in spot units, one per direction class (``centre``: along the
    middle of a floor bin rather than its first edge).
    """
    a = 2 * np.pi * (np.arange(n_directions) + (0.5 if centre else 0.0)) / n_directions
    return np.column_stack([np.sin(a), np.cos(a)])


def direction_mask(
    grid: SpotGrid,
    rows: np.ndarray,
    cols: np.ndarray,
    bin_um: float,
    reach_um: float,
    n_directions: int,
    floor: bool,
) -> np.ndarray:
    """(N, n) bool: the direction classes of spots (rows, cols) in which a nucleus lies within
    ``reach_um`` (its centroid, widened by the angle its equivalent radius subtends).

    The paper's direction prior: a direction with no nucleus within reach is zeroed. Only
    centroids within reach count, so the mask is a function of global coordinates wherever the
    window holds those nuclei whole (the method's halo).
    """
    h, w = grid.shape
    out = np.zeros((h, w, n_directions), bool)
    if not len(rows) or not grid.centroids:
        return out[rows, cols]
    step = 2 * np.pi / n_directions
    spread = np.linspace(-1.0, 1.0, 9)
    o0, o1 = grid.binned.origin
    for i in sorted(grid.centroids):  # one box of spots per nucleus (a few hundred per window)
        cy, cx = grid.centroids[i]
        ra = int(np.floor((cy - reach_um) / bin_um)) - o0
        ca = int(np.floor((cx - reach_um) / bin_um)) - o1
        rb, cb = (
            ra + int(np.ceil(2 * reach_um / bin_um)) + 2,
            ca + int(np.ceil(2 * reach_um / bin_um)) + 2,
        )
        rr, cc = np.mgrid[max(0, ra) : min(h, rb), max(0, ca) : min(w, cb)]
        rr, cc = rr.ravel(), cc.ravel()
        sy, sx = grid.spot_um(rr, cc, bin_um)
        dy, dx = cy - sy, cx - sx
        d = np.hypot(dy, dx)
        keep = d <= reach_um
        rr, cc, dy, dx, d = rr[keep], cc[keep], dy[keep], dx[keep], d[keep]
        half = np.arcsin(np.clip(grid.radii.get(int(i), 0.0) / np.maximum(d, 1e-9), 0.0, 1.0))
        q = (np.arctan2(dy, dx)[:, None] + half[:, None] * spread[None, :]) / step
        cls = np.mod((np.floor(q) if floor else np.round(q)).astype(np.int64), n_directions)
        out[np.repeat(rr, len(spread)), np.repeat(cc, len(spread)), cls.ravel()] = True
    return out[rows, cols]


def centre_map(grid: SpotGrid, bin_um: float, radius_um: float) -> np.ndarray:
    """(H, W) int64: the ID of the nearest nucleus centroid within ``radius_um`` of each spot
    centre (0 elsewhere): where a path tracked to the nucleus centre ends.
    """
    h, w = grid.shape
    out = np.zeros((h, w), np.int64)
    if not grid.centroids or not h or not w:
        return out
    ids = np.array(sorted(grid.centroids))
    cyx = np.array([grid.centroids[i] for i in ids])
    rr, cc = np.mgrid[:h, :w]
    sy, sx = grid.spot_um(rr.ravel(), cc.ravel(), bin_um)
    d, i = cKDTree(cyx).query(np.column_stack([sy, sx]), distance_upper_bound=radius_um)
    hit = np.isfinite(d)
    out.ravel()[hit] = ids[i[hit]]
    return out


def spot_labels(
    grid: SpotGrid,
    bin_um: float,
    k: int,
    erosion_bins: int,
    neg_distance_um: float,
    n_directions: int,
    *,
    need_expression: bool = False,
    floor: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-supervised labels on the spot grid: in/out (1, 0 or IGNORE) and direction (or IGNORE).

    Positives are spots at least ``erosion_bins`` inside a nucleus (the nucleus border is where
    the stain and the bin grid disagree), with the direction to that nucleus's centroid.
    Negatives are spots farther than ``neg_distance_um`` from every nucleus whose whole k x k
    neighbourhood holds no transcript. Everything else is left to the model. The paper
    (``need_expression``, ``floor``) keeps only positives with a transcript and floor-bins the
    direction.
    """
    nuclei = grid.binned.nuclei
    h, w = nuclei.shape
    inout = np.full((h, w), IGNORE, np.int64)
    direction = np.full((h, w), IGNORE, np.int64)
    size = 2 * erosion_bins + 1
    lo = ndi.grey_erosion(nuclei, size=(size, size), mode="nearest")
    hi = ndi.grey_dilation(nuclei, size=(size, size), mode="nearest")
    pos = (nuclei > 0) & (lo == nuclei) & (hi == nuclei)
    total = grid.counts[..., -1]
    if need_expression:
        pos &= total > 0
    if nuclei.any():
        far = ndi.distance_transform_edt(nuclei == 0, sampling=bin_um) > neg_distance_um
    else:
        far = np.ones((h, w), bool)
    empty = ndi.convolve(total.astype(np.int64), np.ones((k, k), np.int64), mode="constant") == 0
    inout[far & empty] = 0
    inout[pos] = 1
    pr, pc = np.nonzero(pos)
    if len(pr):
        sy, sx = grid.spot_um(pr, pc, bin_um)
        cyx = np.array([grid.centroids[int(i)] for i in nuclei[pr, pc]]).reshape(-1, 2)
        dy, dx = cyx[:, 0] - sy, cyx[:, 1] - sx
        cls = direction_class(dy, dx, n_directions, floor)
        cls[np.hypot(dy, dx) < 0.5 * bin_um] = (
            IGNORE  # at the centroid itself no direction is right
        )
        direction[pr, pc] = cls
    return inout, direction


def spot_hash(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per global spot (splitmix64), so sampling does not depend on the tiling."""

    def mix(x):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        h = mix(np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x51ED))
        h = mix(h ^ np.asarray(rows, np.int64).astype(np.uint64))
        h = mix(h ^ (np.asarray(cols, np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

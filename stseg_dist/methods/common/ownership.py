"""Which tile owns what a learned method samples chip-wide: the rule of :mod:`stseg_dist.stitching`.

A nucleus belongs to the tile whose core holds its centroid pixel (the floor of its mean pixel,
from exact integer moments), a bin to the tile whose core holds its centre pixel
(:meth:`BinGrid.owned`), and any pixel to the tile whose core holds it. Cores partition the
chip, so a sample drawn per owner is drawn once, whatever the tiling.
"""

from __future__ import annotations

import numpy as np


def _moments(nuclei: np.ndarray, window_origin: tuple[int, int]):
    """IDs, areas and sums of global row and column indices of the nuclei in a window."""
    flat = nuclei.ravel()
    sel = np.flatnonzero(flat)
    ids, inv = np.unique(flat[sel], return_inverse=True)
    w = nuclei.shape[1]
    area = np.bincount(inv, minlength=len(ids)).astype(np.int64)
    sum_r = (
        np.bincount(inv, weights=sel // w, minlength=len(ids)).astype(np.int64)
        + area * window_origin[0]
    )
    sum_c = (
        np.bincount(inv, weights=sel % w, minlength=len(ids)).astype(np.int64)
        + area * window_origin[1]
    )
    return ids.astype(np.int64), area, sum_r, sum_c


def nucleus_centroids(
    nuclei: np.ndarray, window_origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IDs and global pixel centroids (row, col) of the nuclei seen in a window.

    Moments are sums of integers (exact), offset to global pixels before the one division, so a
    nucleus seen whole gives the same centroid in every window.
    """
    ids, area, sum_r, sum_c = _moments(nuclei, window_origin)
    return ids, sum_r / area, sum_c / area


def centroid_pixels(
    nuclei: np.ndarray, window_origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IDs and centroid pixels (floor of the mean pixel, global row, col) of the nuclei in a
    window: the pixel whose tile owns the nucleus.
    """
    ids, area, sum_r, sum_c = _moments(nuclei, window_origin)
    return ids, sum_r // area, sum_c // area


def owned_nuclei(nuclei: np.ndarray, tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IDs and centroid pixels (global row, col) of the nuclei in a window that the tile owns."""
    wr0, _, wc0, _ = tile.window
    ids, cy, cx = centroid_pixels(nuclei, (wr0, wc0))
    keep = tile.core_contains(cy, cx)
    return ids[keep], cy[keep], cx[keep]


def tile_owning(grid, row: int, col: int) -> int:
    """Index of the tile whose core holds global pixel (row, col)."""
    for tile in grid:
        if tile.core_contains(np.array([row]), np.array([col]))[0]:
            return tile.index
    raise ValueError(f"pixel ({row}, {col}) is outside the tile grid")

"""Per-tile membrane kernels: a classical watershed and Cellpose, both ending in global nucleus IDs.

Pure functions over window arrays (no Ray, no chip), so they are tested directly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, watershed

from ...imaging.filters import smooth


def within_reach(seeds: np.ndarray, max_distance_px: float) -> np.ndarray:
    """Pixels no further than ``max_distance_px`` from a nucleus: no cell extends past it, which
    bounds how far a tile must look (the halo) and keeps debris far from nuclei out of cells.
    """
    return ndi.distance_transform_edt(seeds == 0) <= max_distance_px


def classical_cells(
    membrane: np.ndarray,
    seeds: np.ndarray,
    threshold: float,
    sigma_px: float,
    max_distance_px: float,
    ridge_px: float,
) -> np.ndarray:
    """Cells flooded from the nuclei over the smoothed membrane, never across a membrane ridge.

    Pixels at or above the chip-wide ``threshold`` are membrane and excluded from the flood, so a
    cell fills the basin its nucleus sits in and stops at the membrane (a plain watershed would
    also pour into nucleus-less basins: the gaps between cells). The ridge pixels are then shared
    by the cells on either side (up to ``ridge_px``), which is where the membrane actually lies.
    NaN marks membrane not imaged (shifted in from beyond the chip): it is a barrier too, since a
    membrane-free corridor would let one cell flood along it and make cells depend on the tiling.
    """
    unknown = np.isnan(membrane)
    sm = smooth(np.where(unknown, threshold, membrane), sigma_px)
    within = within_reach(seeds, max_distance_px)
    barrier = (sm >= threshold) | unknown
    labels = watershed(sm, markers=seeds.astype(np.int64), mask=(within & ~barrier) | (seeds > 0))
    grown = expand_labels(labels, ridge_px)
    labels = np.where((labels == 0) & barrier & within, grown, labels)
    return labels.astype(np.uint32)


def best_diameter(
    segment: Callable[[float], np.ndarray], diameters_px: list[float]
) -> tuple[np.ndarray, float, list[int]]:
    """Run ``segment(diameter)`` for each diameter and keep the masks with the largest total cell
    area (STCellbin): too small a diameter splits or misses cells, too large merges them into
    fewer, smaller-than-real masks. Ties keep the first diameter. Returns masks, diameter, areas.
    """
    best, best_d, areas = None, diameters_px[0], []
    for d in diameters_px:
        masks = np.asarray(segment(d))
        areas.append(int(np.count_nonzero(masks)))
        if best is None or areas[-1] > max(areas[:-1], default=-1):
            best, best_d = masks, d
    return best, best_d, areas


def to_global_ids(masks: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Relabel model cells with the global IDs of the nuclei inside them.

    A cell holding one nucleus takes its ID; a cell holding several is split between them by
    nearest nucleus (the model merged touching cells the nuclei tell apart); a cell holding none
    is dropped, since a tile-local ID would change with the tiling and leave a seam.
    """
    masks = masks.astype(np.int64, copy=False)
    out = np.zeros(masks.shape, np.uint32)
    both = (masks > 0) & (nuclei > 0)
    if not both.any():
        return out
    pairs = np.unique(np.stack([masks[both], nuclei[both].astype(np.int64)]), axis=1)
    cells, counts = np.unique(pairs[0], return_counts=True)
    single = cells[counts == 1]
    lut = np.zeros(int(masks.max()) + 1, np.uint32)
    first = np.searchsorted(pairs[0], single)
    lut[single] = pairs[1][first]
    out = lut[masks]
    boxes = ndi.find_objects(masks)
    for cell in cells[counts > 1]:
        box = boxes[cell - 1]
        inside = masks[box] == cell
        ids = pairs[1][pairs[0] == cell]
        sub = np.where(inside & np.isin(nuclei[box], ids), nuclei[box], 0)
        grown = expand_labels(sub, distance=float(sum(s.stop - s.start for s in box)))
        out[box][inside] = grown[inside]
    return out

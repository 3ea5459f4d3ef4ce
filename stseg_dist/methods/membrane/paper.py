"""Per-tile kernels of ``variant: paper`` (STCellbin): cells segmented on the membrane stain alone.

Cells come from the stain (Cellpose, or a watershed that needs no nuclei) over chip-anchored
overlapping blocks (:mod:`.blocks`); nuclei only name them. A cell holding a nucleus's centroid
takes that nucleus's global ID; a cell holding none is kept as a nucleus-free cell (as STCellbin
does) through a seed, a small disc at its centroid that the driver numbers chip-wide like a
nucleus, so its ID does not depend on the tiling either. Pure functions over window arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import expand_labels, watershed

from ...imaging.filters import smooth
from ..common.ownership import centroid_pixels
from .blocks import KeptCell


def watershed_cells(
    membrane: np.ndarray,
    threshold: float,
    sigma_px: float,
    diameter_px: float,
    ridge_px: float,
    min_area_px: float,
    max_area_px: float,
) -> np.ndarray:
    """Cells of a membrane image without nuclei: the non-membrane pixels (below the chip-wide
    ``threshold`` after smoothing), split where the distance to the membrane has separate peaks
    that stand out by ``diameter_px / 8`` (cells joined by a break in the membrane), and given
    the ridge up to ``ridge_px``. An enclosed region larger than ``max_area_px`` is an empty,
    membrane-outlined gap between cells and is dropped before splitting (else it would be cut into
    cell-sized pieces); cells below ``min_area_px`` are debris. NaN (unimaged) is a barrier.
    """
    unknown = np.isnan(membrane)
    sm = smooth(np.where(unknown, threshold, membrane).astype(np.float32), sigma_px)
    inside = (sm < threshold) & ~unknown
    regions, _ = ndi.label(inside)
    big = (
        np.bincount(regions.ravel()) > max_area_px
    )  # an enclosed region larger than any cell is a gap
    big[0] = False
    inside &= ~big[regions]
    dist = ndi.distance_transform_edt(inside)
    # a peak must stand out by a quarter of the cell radius, so an elongated cell's ridge of
    # near-equal distances stays one cell; among close peaks the first in raster order stays
    peaks = h_maxima(dist, max(1.0, diameter_px / 8)) & inside
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3)))
    labels = watershed(-dist, markers, mask=inside)
    labels = np.where(inside, labels, 0)
    grown = expand_labels(labels, ridge_px)
    labels = np.where((labels == 0) & ~unknown, grown, labels)
    area = np.bincount(labels.ravel())
    bad = (area < min_area_px) | (area > max_area_px)
    bad[0] = True
    return np.where(bad[labels], 0, labels).astype(np.int32)


def nucleus_centroids(nuclei: np.ndarray) -> np.ndarray:
    """Window array holding each nucleus's ID at its centroid pixel (floor of the mean, as the
    driver owns nuclei): a cell holds a nucleus when it holds that pixel.
    """
    out = np.zeros(nuclei.shape, np.uint32)
    ids, cy, cx = centroid_pixels(nuclei, (0, 0))
    np.maximum.at(out, (cy, cx), ids.astype(np.uint32))
    return out


def held_nuclei(
    cells: list[KeptCell], centroids: np.ndarray, window: tuple[int, int, int, int]
) -> list[np.ndarray]:
    """For each cell, the IDs of the nuclei whose centroid pixel lies in its own (unresolved)
    mask.
    """
    r0, _, c0, _ = window
    return [np.unique(v[v > 0]) for v in (centroids[c.rows - r0, c.cols - c0] for c in cells)]


def dense_enough(
    cells: list[KeptCell], counts: np.ndarray, window, pixel_area_um2: float, min_density: float
) -> np.ndarray:
    """Whether each cell holds at least ``min_density`` transcripts per µm²
    (counts: per window pixel).
    """
    if min_density <= 0:
        return np.ones(len(cells), bool)
    r0, _, c0, _ = window
    return np.array(
        [
            counts[c.rows - r0, c.cols - c0].sum() >= min_density * len(c.rows) * pixel_area_um2
            for c in cells
        ],
        bool,
    )


def seed_discs(cells: list[KeptCell], keep: np.ndarray, window, radius_px: float) -> np.ndarray:
    """Seeds of the kept nucleus-free cells: each cell's pixels within ``radius_px`` of its
    centroid, labelled 1 + its index (first cell wins where discs overlap). A disc depends only on
    its own block, so the driver numbers it identically from every tile.
    """
    r0, r1, c0, c1 = window
    out = np.zeros((r1 - r0, c1 - c0), np.int32)
    for k, cell in enumerate(cells):
        if not keep[k]:
            continue
        near = (cell.rows - cell.centroid[0]) ** 2 + (
            cell.cols - cell.centroid[1]
        ) ** 2 <= radius_px**2
        rr, cc = cell.rows[near] - r0, cell.cols[near] - c0
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = k + 1
    return out


def global_labels(
    own: np.ndarray,
    cells: list[KeptCell],
    held: list[np.ndarray],
    nuclei: np.ndarray,
    seeds: np.ndarray | None,
    window,
    radius_px: float,
    split_by_nuclei: bool,
) -> np.ndarray:
    """Window labels with global IDs. ``own`` (1 + cell index, first-wins) says which cell a pixel
    is in; a cell holding nuclei takes their IDs (several: split by nearest nucleus, or, without
    ``split_by_nuclei``, the one it covers most); one holding none takes the seed in its centroid
    disc, if the seed pass kept it; else it is dropped.
    """
    r0, _, c0, _ = window
    n = len(cells)
    lut = np.zeros(n + 1, np.uint32)
    several = []
    for k, (cell, ids) in enumerate(zip(cells, held, strict=False), start=1):
        if len(ids) == 1:
            lut[k] = ids[0]
        elif len(ids) > 1:
            if split_by_nuclei:
                several.append(k)
            else:
                cover = [
                    (np.count_nonzero(nuclei[cell.rows - r0, cell.cols - c0] == i), -int(i))
                    for i in ids
                ]
                lut[k] = -max(cover)[1]
        elif seeds is not None:
            near = (cell.rows - cell.centroid[0]) ** 2 + (
                cell.cols - cell.centroid[1]
            ) ** 2 <= radius_px**2
            v = seeds[cell.rows[near] - r0, cell.cols[near] - c0]
            v = v[v > 0]
            if v.size:
                vals, counts = np.unique(v, return_counts=True)
                lut[k] = vals[np.argmax(counts)]
    out = lut[own]
    boxes = ndi.find_objects(own.astype(np.int64)) if several else []
    for k in several:
        box = boxes[k - 1] if k - 1 < len(boxes) else None
        if box is None:
            continue
        inside = own[box] == k
        sub = np.where(inside & np.isin(nuclei[box], held[k - 1]), nuclei[box], 0)
        grown = expand_labels(sub, distance=float(sum(s.stop - s.start for s in box)))
        out[box][inside] = grown[inside]
    return out

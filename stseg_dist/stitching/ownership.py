"""Which tile owns an object: the one whose core holds the object's centroid pixel.

Every tile segments its whole window, but keeps only the objects it owns. Because cores
partition the image, each object is kept by exactly one tile however many tiles saw it, and
the halo guarantees that tile saw the object whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from ..tiling import Tile


@dataclass
class OwnedObjects:
    """Objects owned by one tile, as a compact label crop plus exact integer moments."""

    tile_index: int
    labels: np.ndarray  # uint32 crop, local IDs 1..n, 0 elsewhere
    offset: tuple[int, int]  # global (row, col) of the crop's top-left pixel
    area: np.ndarray  # int64[n] pixels
    sum_r: np.ndarray  # int64[n] sum of global rows
    sum_c: np.ndarray  # int64[n] sum of global cols
    n_clipped: int = 0  # owned objects that touch the window edge inside the image

    def __len__(self) -> int:
        return len(self.area)

    def to_npz(self) -> dict[str, np.ndarray]:
        return {
            "tile_index": np.int64(self.tile_index),
            "labels": self.labels,
            "offset": np.asarray(self.offset, np.int64),
            "area": self.area,
            "sum_r": self.sum_r,
            "sum_c": self.sum_c,
            "n_clipped": np.int64(self.n_clipped),
        }

    @classmethod
    def from_npz(cls, z) -> OwnedObjects:
        return cls(
            int(z["tile_index"]),
            z["labels"],
            tuple(int(v) for v in z["offset"]),
            z["area"],
            z["sum_r"],
            z["sum_c"],
            int(z["n_clipped"]),
        )


def owned_objects(labels: np.ndarray, tile: Tile, image_shape: tuple[int, int]) -> OwnedObjects:
    """Keep the objects of a window-shaped label array whose centroid pixel lies in the core."""
    wr0, wr1, wc0, wc1 = tile.window
    lab, _, _ = relabel_sequential(np.asarray(labels))
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return _empty(tile.index)
    flat = lab.ravel()
    rr, cc = np.indices(lab.shape, dtype=np.int64)
    area = np.bincount(flat, minlength=n + 1).astype(np.int64)
    sum_r = np.bincount(flat, weights=rr.ravel(), minlength=n + 1).astype(np.int64) + area * wr0
    sum_c = np.bincount(flat, weights=cc.ravel(), minlength=n + 1).astype(np.int64) + area * wc0
    ids = np.arange(1, n + 1)
    present = area[1:] > 0
    cy = sum_r[1:] // np.maximum(area[1:], 1)
    cx = sum_c[1:] // np.maximum(area[1:], 1)
    owned = present & tile.core_contains(cy, cx)
    if not owned.any():
        return _empty(tile.index)
    keep_ids = ids[owned]
    # Objects touching a window edge that is not the image edge were possibly seen cut.
    slices = ndi.find_objects(lab)
    h, w = lab.shape
    n_clipped = 0
    for i in keep_ids:
        sr, sc = slices[i - 1]
        if (
            (sr.start == 0 and wr0 > 0)
            or (sr.stop == h and wr1 < image_shape[0])
            or (sc.start == 0 and wc0 > 0)
            or (sc.stop == w and wc1 < image_shape[1])
        ):
            n_clipped += 1
    lut = np.zeros(n + 1, np.uint32)
    lut[keep_ids] = np.arange(1, len(keep_ids) + 1, dtype=np.uint32)
    mapped = lut[lab]
    r_any = np.flatnonzero(mapped.any(axis=1))
    c_any = np.flatnonzero(mapped.any(axis=0))
    r0, r1, c0, c1 = r_any[0], r_any[-1] + 1, c_any[0], c_any[-1] + 1
    return OwnedObjects(
        tile.index,
        np.ascontiguousarray(mapped[r0:r1, c0:c1]),
        (int(wr0 + r0), int(wc0 + c0)),
        area[keep_ids],
        sum_r[keep_ids],
        sum_c[keep_ids],
        n_clipped,
    )


def _empty(tile_index: int) -> OwnedObjects:
    z = np.zeros(0, np.int64)
    return OwnedObjects(tile_index, np.zeros((0, 0), np.uint32), (0, 0), z, z.copy(), z.copy())

"""The store's raster pyramids, block by block: each block of whole chunks computes every level
of itself from its own level-0 pixels, so blocks run as independent tasks and none holds more
than one block.

The levels are those spatialdata's writer makes (``Labels2DModel.parse`` / ``Image2DModel.parse``
with ``scale_factors``), so the store stays what spatialdata itself writes:

- labels: ome-zarr's blockwise ``resize(order=0)`` (nearest), which spatialdata uses for labels.
  It resizes each dask block on its own, so on an odd-sized axis the last block is sampled at
  its own scale. Nearest is separable: each level is ``prev[iy][:, ix]`` with one source index
  per output row and column (:func:`nearest_index`), computed once here from that blockwise
  rule;
- image: the 2 x 2 mean that spatialdata uses for images (multiscale-spatial-image's xarray
  ``coarsen(...).mean()``, cast back to the dtype). There ``side="right"`` drops an odd axis's
  *first* pixel, which shifts every coarser pixel by half a pixel against the level's
  transformation; here the last pixel is dropped (pairs ``2i, 2i + 1``), which keeps the levels
  on the grid the transformation says and makes every chunk-aligned block self-contained. Even
  sizes give the same levels as spatialdata's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: The largest block side (px at the level a phase reads) a task reads: a uint32 block of
#: 2048 x 2048 is 16 MB, about one tile's label window.
BLOCK_MAX_PX = 2048


@lru_cache(maxsize=256)
def _nearest_1d(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel when skimage resizes ``n_in`` pixels to ``n_out`` by
    nearest neighbour (``order=0, mode="reflect", anti_aliasing=False``), as ome-zarr does.
    """
    import skimage.transform

    src = np.arange(n_in, dtype=float)[None, :]
    got = skimage.transform.resize(src, (1, n_out), order=0, mode="reflect", anti_aliasing=False)
    return got[0].astype(np.int64)


def nearest_index(n: int, chunk: int) -> np.ndarray:
    """For an axis of ``n`` pixels in dask chunks of ``chunk``, the source index of each pixel of
    the next level as ome-zarr's ``dask_utils.resize`` computes it (spatialdata's labels
    pyramid): the output size ``n // 2`` (``n`` where 2 > n), blocks rechunked to ome-zarr's
    "better" size, each resized to ``ceil(size * factor)`` and placed at ``j * ceil(b * factor)``,
    the whole cut to the output size.
    """
    out = n // 2 if n >= 2 else n
    factor = np.array([out]) / np.array([n]).astype(float)
    better = np.maximum(1, np.round(np.array([chunk]) * factor) / factor).astype(int)
    b = int(better[0])
    step = int(np.ceil(np.array([b]) * factor).astype(int)[0])
    idx = np.empty(step * (-(-n // b)), dtype=np.int64)
    for j, start in enumerate(range(0, n, b)):
        size = min(b, n - start)
        m = int(np.ceil(np.array([size]) * factor).astype(int)[0])
        idx[j * step : j * step + m] = start + _nearest_1d(size, m)
    return idx[:out]


def labels_down(block: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """The next level of a label block: its rows ``iy`` and columns ``ix`` (block-local)."""
    return block[iy][:, ix]


def image_down(block: np.ndarray) -> np.ndarray:
    """The next level of an image block (..., y, x): the mean of each 2 x 2 pixels ``2i, 2i + 1``
    (an odd axis's last pixel dropped), cast back to the block's dtype as xarray's
    ``coarsen().mean().astype()`` does.
    """
    h, w = block.shape[-2] // 2, block.shape[-1] // 2
    b = block[..., : 2 * h, : 2 * w]
    quads = b.reshape(*b.shape[:-2], h, 2, w, 2)
    return quads.mean(axis=(-3, -1)).astype(block.dtype)


@dataclass(frozen=True)
class Raster:
    """One raster element's pyramid: each level's (y, x) shape, zarr chunk (y, x) and, for
    labels, the nearest-neighbour source indices of each level (from the level above).
    """

    kind: str  # "labels" or "image"
    shapes: tuple[tuple[int, int], ...]
    chunks: tuple[tuple[int, int], ...]
    index: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None  # labels: per level >= 1

    @classmethod
    def plan(cls, kind: str, shape_yx, dask_chunks, zarr_chunks) -> Raster:
        """From spatialdata's own element: each level's shape, the chunk size of its dask array
        (what ome-zarr's resize rechunks against) and its zarr chunk shape.
        """
        shapes = tuple(tuple(int(v) for v in s) for s in shape_yx)
        index = None
        if kind == "labels":
            index = tuple(
                (
                    nearest_index(shapes[k][0], dask_chunks[k][0]),
                    nearest_index(shapes[k][1], dask_chunks[k][1]),
                )
                for k in range(len(shapes) - 1)
            )
            for k, (iy, ix) in enumerate(index):  # the levels spatialdata's element says
                if (len(iy), len(ix)) != shapes[k + 1]:
                    raise ValueError(f"labels level {k + 1}: {shapes[k + 1]} vs {len(iy), len(ix)}")
        else:
            for k in range(1, len(shapes)):
                if shapes[k] != (shapes[k - 1][0] // 2, shapes[k - 1][1] // 2):
                    raise ValueError(f"image level {k}: {shapes[k]} is not half of {shapes[k - 1]}")
        return cls(kind, shapes, tuple(tuple(int(v) for v in c) for c in zarr_chunks), index)

    @property
    def n_levels(self) -> int:
        return len(self.shapes)

    def phases(self, block_max_px: int | None = None) -> list[tuple[int, int, int]]:
        """How the levels are computed: ``(source level, last level, block side at the source)``
        per phase. A phase's blocks hold whole zarr chunks at every level they write (so no two
        tasks write one chunk) and read only their own pixels; a phase computes as many levels
        as a block of at most ``block_max_px`` allows, the next phase reading the last level
        written (a quarter of the pixels or less).
        """
        block_max_px = block_max_px or BLOCK_MAX_PX
        if self.n_levels == 1:
            c = max(self.chunks[0])
            return [(0, 0, c * max(1, block_max_px // c))]
        out, src = [], 0
        while True:
            last, side = src + 1, self._side(src, src + 1)
            for k in range(src + 2, self.n_levels):
                s = self._side(src, k)
                if s > block_max_px:
                    break
                side, last = s, k
            out.append((src, last, side))
            if last == self.n_levels - 1:
                return out
            src = last

    def _side(self, src: int, last: int) -> int:
        """The smallest block side at level ``src`` whose blocks are self-contained down to
        level ``last``: whole zarr chunks at every level, and (labels) every output pixel's
        source inside its own block; the whole level where nothing smaller is.
        """
        side = self._aligned_side(src, last)
        whole = max(self.shapes[src])
        while side < whole and not self._contained(src, last, side):
            side *= 2
        return side

    def _contained(self, src: int, last: int, side: int) -> bool:
        if self.kind == "image":
            return True
        for axis in (0, 1):
            n = self.shapes[src][axis]
            starts = list(range(0, n, side))
            for k in range(src + 1, last + 1):
                n_prev, n_k = self.shapes[k - 1][axis], self.shapes[k][axis]
                shift = k - src
                for j, s0 in enumerate(starts):
                    a, b = s0 >> (shift - 1), min(s0 + side, n) >> (shift - 1)
                    if j == len(starts) - 1:
                        b = n_prev
                    oa = a // 2
                    ob = n_k if j == len(starts) - 1 else b // 2
                    idx = self.index[k - 1][axis][oa:ob]
                    if len(idx) and (idx.min() < a or idx.max() >= b):
                        return False
        return True

    def _aligned_side(self, src: int, last: int) -> int:
        """The smallest block side at level ``src`` that halves into whole zarr chunks down to
        level ``last`` (whole-level blocks where a level is one chunk).
        """
        side = 1
        for k in range(src, last + 1):
            c = max(self.chunks[k]) << (k - src)
            side = side * c // np.gcd(side, c)
        return int(side)

    def blocks(self, src: int, side: int) -> list[tuple[int, int, int, int]]:
        """The (y0, y1, x0, x1) blocks of level ``src`` of side ``side``."""
        h, w = self.shapes[src]
        return [
            (y, min(y + side, h), x, min(x + side, w))
            for y in range(0, h, side)
            for x in range(0, w, side)
        ]

    def down(self, block: np.ndarray, level: int, y0: int, x0: int):
        """Level ``level`` of the block whose level ``level - 1`` is ``block`` at (y0, x0);
        returns it and its own origin. Raises if the block would need pixels it does not hold.
        """
        if self.kind == "image":
            if y0 % 2 or x0 % 2:
                raise ValueError(f"image block at odd origin {(y0, x0)}")
            return image_down(block), y0 // 2, x0 // 2
        iy, ix = self.index[level - 1]
        h, w = block.shape[-2:]
        ny, nx = self.shapes[level]
        oy0, ox0 = y0 // 2, x0 // 2
        oy1 = ny if y0 + h >= self.shapes[level - 1][0] else (y0 + h) // 2
        ox1 = nx if x0 + w >= self.shapes[level - 1][1] else (x0 + w) // 2
        ly, lx = iy[oy0:oy1] - y0, ix[ox0:ox1] - x0
        if (
            len(ly)
            and (ly.min() < 0 or ly.max() >= h)
            or len(lx)
            and (lx.min() < 0 or lx.max() >= w)
        ):
            raise ValueError(f"labels level {level}: block at {(y0, x0)} needs pixels beyond it")
        return labels_down(block, ly, lx), oy0, ox0


def pyramid(raster: Raster, level0: np.ndarray) -> list[np.ndarray]:
    """Every level of a whole raster from its level 0 (the reference the blocks must equal)."""
    out = [level0]
    for k in range(1, raster.n_levels):
        out.append(raster.down(out[-1], k, 0, 0)[0])
    return out

"""Chip-anchored overlapping blocks: how the paper variant segments a membrane stain seamlessly.

STCellbin runs Cellpose on overlapping tiles of the stain and merges them. Here the tiles are
*blocks* anchored to the chip (block (i, j) has the core rows ``[i*B, (i+1)*B)`` and columns
``[j*B, (j+1)*B)`` and is segmented on its core grown by a margin M), so a block's cells depend on
the chip alone, never on the pipeline's tiling. A block keeps the cells whose centroid lies in its
core; where kept cells of neighbouring blocks overlap, the block first in row-major order wins.
Every decision about a pixel then depends only on the blocks whose extended region holds it,
which a pipeline window sees whole once its halo is at least ``B + 2M``: labels are identical
whatever the tiling (tested), and no cell needs a nucleus to get a chip-wide ID.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class BlockGrid:
    """Block geometry in chip pixels: core side ``block_px``, margin ``margin_px``."""

    shape: tuple[int, int]  # the chip, (rows, cols)
    block_px: int
    margin_px: int

    @property
    def n_rows(self) -> int:
        return math.ceil(self.shape[0] / self.block_px)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.shape[1] / self.block_px)

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        b, (h, w) = self.block_px, self.shape
        return i * b, min(h, (i + 1) * b), j * b, min(w, (j + 1) * b)

    def extended(self, i: int, j: int) -> tuple[int, int, int, int]:
        r0, r1, c0, c1 = self.core(i, j)
        m, (h, w) = self.margin_px, self.shape
        return max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)

    def within(self, window: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """Blocks whose extended region lies inside ``window`` (chip pixels), in row-major order."""
        r0, r1, c0, c1 = window
        out = []
        for i in range(max(0, r0 // self.block_px - 1), min(self.n_rows, r1 // self.block_px + 1)):
            for j in range(
                max(0, c0 // self.block_px - 1), min(self.n_cols, c1 // self.block_px + 1)
            ):
                e = self.extended(i, j)
                if e[0] >= r0 and e[1] <= r1 and e[2] >= c0 and e[3] <= c1:
                    out.append((i, j))
        return out

    def context_px(self) -> int:
        """Halo a window needs so each core pixel's label is decided by blocks it sees whole."""
        return self.block_px + 2 * self.margin_px


@dataclass
class KeptCell:
    """One block's cell with its centroid in the block core, in chip pixels."""

    block: tuple[int, int]
    rows: np.ndarray  # int64 chip rows of its pixels
    cols: np.ndarray
    centroid: tuple[int, int]  # floor of the mean pixel, chip coordinates


def kept_cells(labels: np.ndarray, grid: BlockGrid, block: tuple[int, int]) -> list[KeptCell]:
    """The cells of one block's extended-region labels whose centroid pixel lies in its core."""
    er0, _, ec0, _ = grid.extended(*block)
    r0, r1, c0, c1 = grid.core(*block)
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        rr, cc = np.nonzero(labels[sl] == k)
        rr = rr.astype(np.int64) + sl[0].start + er0
        cc = cc.astype(np.int64) + sl[1].start + ec0
        cy, cx = int(rr.sum() // len(rr)), int(cc.sum() // len(cc))
        if r0 <= cy < r1 and c0 <= cx < c1:
            out.append(KeptCell(block, rr, cc, (cy, cx)))
    return out


def window_cells(
    window: tuple[int, int, int, int],
    grid: BlockGrid,
    segment_block: Callable[[list[tuple[int, int]]], list[np.ndarray]],
) -> list[KeptCell]:
    """Kept cells of every block the window sees whole, in the chip-wide order (block row-major,
    then the block's own label order). ``segment_block`` labels a batch of blocks' extended
    regions at once (one Cellpose call for all of a tile's blocks).
    """
    blocks = grid.within(window)
    cells: list[KeptCell] = []
    for block, labels in zip(blocks, segment_block(blocks), strict=False):
        cells += kept_cells(np.asarray(labels), grid, block)
    return cells


def paint_first(cells: list[KeptCell], window: tuple[int, int, int, int]) -> np.ndarray:
    """Window labels (1 + index into ``cells``; 0 none): a pixel claimed by several kept cells
    goes to the first, so the rule needs only the cells that claim it.
    """
    r0, r1, c0, c1 = window
    out = np.zeros((r1 - r0, c1 - c0), np.int64)
    for k, cell in enumerate(cells, start=1):
        rr, cc = cell.rows - r0, cell.cols - c0
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = k
    return out

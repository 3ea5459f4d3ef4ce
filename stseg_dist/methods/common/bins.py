"""The chip-anchored bin grid the learned methods work on, and a tile window binned onto it.

Bins are anchored to the chip origin, never to a window: bin ``b`` covers the image pixels whose
centre falls in it, so every window that sees a bin computes the same value for it. That is the
basis of their tile invariance. A grid is ``scale`` bins per image pixel (any bin size: UCS and
SSL-CST spots), or a whole ``factor`` of pixels per bin side (GeneSegNet), whose arithmetic is
then exact integer arithmetic: the two agree on every pixel, but a float scale of 1/factor could
put a bin centre one pixel off.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...io.chip import ChipFacts
from ..base import TileData


def bin_size_um(facts: ChipFacts, configured: float | None) -> float:
    """A method's ``bin_um`` where set, else the chip's (chip.json ``bin_um``: the spot pitch
    where it is finer than 1 µm, else 1 µm, as in the UCS paper).
    """
    return float(configured) if configured else facts.bin_um


@dataclass(frozen=True)
class BinGrid:
    """A window's bins on the chip-wide grid."""

    scale: float  # bins per image pixel
    origin: tuple[int, int]  # global bin of the window's first bin
    shape: tuple[int, int]  # bins
    pixel_origin: tuple[int, int]  # global pixel of the window's first pixel
    factor: int | None = None  # whole image pixels per bin side, when the grid is built from one

    @classmethod
    def for_window(
        cls,
        window: tuple[int, int, int, int],
        *,
        scale: float | None = None,
        factor: int | None = None,
    ) -> BinGrid:
        """Every bin holding the centre of a pixel of ``window`` (r0, r1, c0, c1 global pixels)."""
        r0, r1, c0, c1 = window
        grid = cls(1.0 / factor if factor else float(scale), (0, 0), (0, 0), (r0, c0), factor)
        b0 = grid.pixel_to_bin(np.array([r0, c0]))
        b1 = grid.pixel_to_bin(np.array([r1 - 1, c1 - 1])) + 1
        return cls(
            grid.scale,
            (int(b0[0]), int(b0[1])),
            (int(b1[0] - b0[0]), int(b1[1] - b0[1])),
            (r0, c0),
            factor,
        )

    def pixel_to_bin(self, px) -> np.ndarray:
        """Global bin holding the centre of each global pixel index."""
        if self.factor:
            return np.asarray(px, np.int64) // self.factor
        return np.floor((np.asarray(px, np.float64) + 0.5) * self.scale).astype(np.int64)

    def bin_to_pixel(self, b) -> np.ndarray:
        """A global pixel whose centre lies in each global bin
        (the one nearest the bin's centre).
        """
        if self.factor:
            return np.asarray(b, np.int64) * self.factor + self.factor // 2
        return np.floor((np.asarray(b, np.float64) + 0.5) / self.scale).astype(np.int64)

    def window_bins(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Window pixel indices (e.g. of transcripts) -> window-relative bins."""
        return (
            self.pixel_to_bin(np.asarray(rows) + self.pixel_origin[0]) - self.origin[0],
            self.pixel_to_bin(np.asarray(cols) + self.pixel_origin[1]) - self.origin[1],
        )

    def to_pixels(self, labels: np.ndarray, pixel_shape: tuple[int, int]) -> np.ndarray:
        """Bin-grid values back onto the window's pixels (the bin holding each pixel centre)."""
        r, c = self.window_bins(np.arange(pixel_shape[0]), np.arange(pixel_shape[1]))
        return labels[
            np.clip(r, 0, self.shape[0] - 1)[:, None], np.clip(c, 0, self.shape[1] - 1)[None, :]
        ]

    def sample(self, labels: np.ndarray) -> np.ndarray:
        """A window-shaped pixel array on the bins: the pixel nearest each bin centre (clipped)."""
        h, w = labels.shape
        r = np.clip(
            self.bin_to_pixel(np.arange(self.shape[0]) + self.origin[0]) - self.pixel_origin[0],
            0,
            h - 1,
        )
        c = np.clip(
            self.bin_to_pixel(np.arange(self.shape[1]) + self.origin[1]) - self.pixel_origin[1],
            0,
            w - 1,
        )
        return labels[r[:, None], c[None, :]]

    def block_mean(self, image: np.ndarray) -> np.ndarray:
        """Mean of each bin's pixels inside a window-shaped image
        (partial bins at the edges included).
        """
        r, c = self.window_bins(np.arange(image.shape[0]), np.arange(image.shape[1]))
        h, w = self.shape
        flat = (r[:, None] * w + c[None, :]).ravel()
        sums = np.bincount(flat, weights=image.astype(np.float64).ravel(), minlength=h * w).reshape(
            h, w
        )
        counts = np.bincount(flat, minlength=h * w).reshape(h, w)
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    def owned(self, tile) -> np.ndarray:
        """(H, W) bool: the bins this tile owns, those whose centre pixel lies in its core.

        Cores partition the chip, so summing per-tile statistics over owned bins counts every
        bin once, whatever the tiling.
        """
        r = self.bin_to_pixel(np.arange(self.shape[0]) + self.origin[0])
        c = self.bin_to_pixel(np.arange(self.shape[1]) + self.origin[1])
        r0, r1, c0, c1 = tile.core
        return ((r >= r0) & (r < r1))[:, None] & ((c >= c0) & (c < c1))[None, :]

    def core_box(self, tile) -> tuple[int, int, int, int]:
        """Window-relative bin box (r0, r1, c0, c1) holding the centre of every core pixel."""
        r0, r1, c0, c1 = tile.core
        br = self.pixel_to_bin(np.array([r0, r1 - 1])) - self.origin[0]
        bc = self.pixel_to_bin(np.array([c0, c1 - 1])) - self.origin[1]
        return int(br[0]), int(br[1]) + 1, int(bc[0]), int(bc[1]) + 1


@dataclass
class BinnedTile:
    """A tile window on the bin grid: its transcripts as sparse (row, col, gene) bin indices, and
    nuclei (and nucleus-less seeds) as global IDs per bin.

    The dense transcript map (genes x H x W) is never built, so memory follows the number of
    transcripts, not the size of the panel.
    """

    grid: BinGrid
    rows: np.ndarray  # int64 bin row per transcript (window-relative)
    cols: np.ndarray  # int64 bin col per transcript (window-relative)
    genes: np.ndarray  # int64 gene index (chip vocabulary)
    nuclei: np.ndarray  # (H, W) int64 global nucleus IDs on the bin grid
    seeds: np.ndarray | None = None  # (H, W) int64 nucleus-less seeds, or None

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def scale(self) -> float:
        return self.grid.scale

    @property
    def origin(self) -> tuple[int, int]:
        return self.grid.origin

    @cached_property
    def by_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, genes) sorted by row then column, so a band of rows is one searchsorted
        slice.
        """
        order = np.lexsort((self.cols, self.rows))
        return self.rows[order], self.cols[order], self.genes[order]

    def in_box(
        self, r0: int, r1: int, c0: int, c1: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, genes) of the transcripts in a bin box, relative to its corner."""
        rows, cols, genes = self.by_row
        lo, hi = np.searchsorted(rows, [r0, r1])
        inside = (cols[lo:hi] >= c0) & (cols[lo:hi] < c1)
        return rows[lo:hi][inside] - r0, cols[lo:hi][inside] - c0, genes[lo:hi][inside]

    def counts(self) -> np.ndarray:
        """Total transcripts per bin."""
        out = np.zeros(self.shape, np.float32)
        np.add.at(out, (self.rows, self.cols), 1.0)
        return out

    def to_pixels(self, labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Bin-grid labels back onto the window's image pixels
        (the bin holding each pixel centre).
        """
        return self.grid.to_pixels(labels, shape)


def bin_tile(
    data: TileData, bin_um: float | None = None, keep=None, *, factor: int | None = None
) -> BinnedTile:
    """Bin a tile window into ``bin_um`` bins, or ``factor`` x ``factor`` pixel bins.

    ``keep(x_um, y_um, genes) -> bool mask`` filters the transcripts (e.g. each region's HVGs).
    """
    h, w = data.shape
    wr0, _, wc0, _ = data.tile.window
    scale = None if factor else data.pixel_size_um / bin_um
    grid = BinGrid.for_window((wr0, wr0 + h, wc0, wc0 + w), scale=scale, factor=factor)
    tx = data.transcripts
    rows, cols = grid.window_bins(tx.row, tx.col)
    genes = tx.gene.astype(np.int64)
    if keep is not None and len(genes):
        sel = keep(tx.x, tx.y, genes)
        rows, cols, genes = rows[sel], cols[sel], genes[sel]
    nuclei = grid.sample(data.nuclei).astype(np.int64)
    seeds = grid.sample(data.seeds).astype(np.int64) if data.seeds is not None else None
    return BinnedTile(grid, rows, cols, genes, nuclei, seeds)

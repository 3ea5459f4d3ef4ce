"""UCS inputs on the bin grid: sparse transcript lists, per-region highly variable genes, nuclei.

The transcript map G (genes x H x W) is never built: a tile keeps its transcripts as
(row, col, gene) bin indices, and the network's first layer scatters gene embeddings into the
grid, so memory follows the number of transcripts, not the size of the panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from ..base import TileData

#: Bin size by platform when ``ucs.bin_um`` is not set: 1 µm for Xenium and MERSCOPE, 0.5 µm for
#: CosMx and Stereo-seq (their finer spot pitch), as in the UCS paper.
BIN_UM = {"cosmx": 0.5, "stereoseq": 0.5}


def bin_size_um(platform: str, configured: float | None) -> float:
    return float(configured) if configured else BIN_UM.get(platform.lower(), 1.0)


@dataclass
class BinnedTile:
    """A window on the chip-wide bin grid: sparse transcripts and nuclei (global IDs).

    Bins are anchored to the chip origin (bin b covers the image pixels whose centre falls in
    it), never to the window, so every window sees the same bins: the basis of tile invariance.
    """

    shape: tuple[int, int]
    rows: np.ndarray  # int64 bin row per transcript (window-relative)
    cols: np.ndarray  # int64 bin col per transcript (window-relative)
    genes: np.ndarray  # int64 gene index (chip vocabulary)
    nuclei: np.ndarray  # (H, W) int64 global nucleus IDs on the bin grid
    seeds: np.ndarray | None  # (H, W) int64 nucleus-less seeds, or None
    scale: float  # bins per image pixel
    origin: tuple[int, int]  # global bin index of the window's first bin
    pixel_origin: tuple[int, int]  # global pixel of the window's first pixel

    @cached_property
    def by_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, genes) sorted by row then column, so a band of rows is one searchsorted slice."""
        order = np.lexsort((self.cols, self.rows))
        return self.rows[order], self.cols[order], self.genes[order]

    def counts(self) -> np.ndarray:
        """Total transcripts per bin."""
        out = np.zeros(self.shape, np.float32)
        np.add.at(out, (self.rows, self.cols), 1.0)
        return out

    def to_pixels(self, labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Bin-grid labels back onto the window's image pixels (the bin holding each pixel centre)."""
        r = _pixel_to_bin(np.arange(shape[0]) + self.pixel_origin[0], self.scale) - self.origin[0]
        c = _pixel_to_bin(np.arange(shape[1]) + self.pixel_origin[1], self.scale) - self.origin[1]
        return labels[np.clip(r, 0, self.shape[0] - 1)[:, None], np.clip(c, 0, self.shape[1] - 1)[None, :]]


def _pixel_to_bin(px: np.ndarray, scale: float) -> np.ndarray:
    return np.floor((np.asarray(px, np.float64) + 0.5) * scale).astype(np.int64)


def _bin_to_pixel(b: np.ndarray, scale: float) -> np.ndarray:
    """A pixel whose centre lies in bin b (the one nearest the bin's centre)."""
    return np.floor((np.asarray(b, np.float64) + 0.5) / scale).astype(np.int64)


def resample_labels(labels: np.ndarray, pixel_origin, bin_origin, shape, scale) -> np.ndarray:
    """Labels at the pixel nearest each bin centre, for the bins of a window."""
    h, w = labels.shape
    r = np.clip(_bin_to_pixel(np.arange(shape[0]) + bin_origin[0], scale) - pixel_origin[0], 0, h - 1)
    c = np.clip(_bin_to_pixel(np.arange(shape[1]) + bin_origin[1], scale) - pixel_origin[1], 0, w - 1)
    return labels[r[:, None], c[None, :]].astype(np.int64)


def bin_tile(data: TileData, bin_um: float, keep=None) -> BinnedTile:
    """Bin a tile window. ``keep(x_um, y_um, genes) -> bool mask`` filters genes (e.g. HVGs)."""
    h, w = data.shape
    scale = data.pixel_size_um / bin_um
    wr0, _, wc0, _ = data.tile.window
    b0 = _pixel_to_bin(np.array([wr0, wc0]), scale)
    b1 = _pixel_to_bin(np.array([wr0 + h - 1, wc0 + w - 1]), scale) + 1
    shape = (int(b1[0] - b0[0]), int(b1[1] - b0[1]))
    tx = data.transcripts
    rows = _pixel_to_bin(tx.row + wr0, scale) - b0[0]
    cols = _pixel_to_bin(tx.col + wc0, scale) - b0[1]
    genes = tx.gene.astype(np.int64)
    if keep is not None and len(genes):
        sel = keep(tx.x, tx.y, genes)
        rows, cols, genes = rows[sel], cols[sel], genes[sel]
    origin = (int(b0[0]), int(b0[1]))
    nuclei = resample_labels(data.nuclei, (wr0, wc0), origin, shape, scale)
    seeds = resample_labels(data.seeds, (wr0, wc0), origin, shape, scale) if data.seeds is not None else None
    return BinnedTile(shape, rows, cols, genes, nuclei, seeds, scale, origin, (wr0, wc0))


def select_hvg(rows: np.ndarray, cols: np.ndarray, genes: np.ndarray, n_genes: int, n_hvg: int,
               block: int = 10) -> np.ndarray:
    """Boolean mask of the region's highly variable genes (all genes when the panel is small).

    Dispersion (variance / mean) of each gene's counts over ``block``-bin squares of the region,
    ranked: the genes whose expression varies most across the region carry cell structure.
    """
    keep = np.zeros(n_genes, bool)
    if n_genes <= n_hvg:
        keep[:] = True
        return keep
    if len(genes) == 0:
        return keep
    br, bc = rows // block, cols // block
    nbc = int(bc.max()) + 1
    key = (br * nbc + bc) * n_genes + genes
    uniq, cnt = np.unique(key, return_counts=True)
    n_blocks = int((br.max() + 1) * nbc)
    g = uniq % n_genes
    s1 = np.bincount(g, weights=cnt, minlength=n_genes)
    s2 = np.bincount(g, weights=cnt.astype(np.float64) ** 2, minlength=n_genes)
    mean = s1 / n_blocks
    var = s2 / n_blocks - mean**2
    disp = np.where(mean > 0, var / np.maximum(mean, 1e-12), -np.inf)
    top = np.argsort(-disp, kind="stable")[:n_hvg]
    keep[top[np.isfinite(disp[top])]] = True
    return keep


def marker_grid(rows: np.ndarray, cols: np.ndarray, genes: np.ndarray, lut: np.ndarray,
                shape: tuple[int, int]) -> np.ndarray:
    """Per bin: 1 + the cell type whose marker gene lies there (0 = none; the highest type wins)."""
    out = np.zeros(shape, np.int64)
    types = lut[genes]
    hit = types > 0
    np.maximum.at(out, (rows[hit], cols[hit]), types[hit])
    return out


def cell_marker_mask(markers: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Bins holding markers of the type found on and around (2 bins) a nucleus, grown by one bin."""
    near = ndi.binary_dilation(nucleus, iterations=2, structure=np.ones((3, 3), bool))
    types = markers[near & (markers > 0)]
    if not len(types):
        return np.zeros(markers.shape, np.float32)
    return ndi.binary_dilation(markers == np.bincount(types).argmax(), iterations=1).astype(np.float32)

"""UCS inputs on the bin grid: per-region highly variable genes and marker genes.

A tile is binned by the learned methods' shared grid (``methods/common/bins.py``: ``bin_tile``,
``BinnedTile``): its transcripts stay (row, col, gene) bin indices, never the dense map G
(genes x H x W), and the network's first layer scatters gene embeddings into the grid, so memory
follows the number of transcripts, not the size of the panel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def select_hvg(
    rows: np.ndarray, cols: np.ndarray, genes: np.ndarray, n_genes: int, n_hvg: int, block: int = 10
) -> np.ndarray:
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


def marker_grid(
    rows: np.ndarray, cols: np.ndarray, genes: np.ndarray, lut: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
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
    return ndi.binary_dilation(markers == np.bincount(types).argmax(), iterations=1).astype(
        np.float32
    )

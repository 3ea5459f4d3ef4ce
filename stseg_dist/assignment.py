"""The per-tile partial sums that become the cell table and the count matrix.

Everything is computed on the tile core only, so summing partials over tiles counts each pixel
and each transcript exactly once (:mod:`stseg_dist.partials` declares how they are saved).
The pixel lookup that assigns transcripts by default is
:meth:`stseg_dist.tiledata.TileResult.resolve`.
"""

from __future__ import annotations

import numpy as np


def pixel_stats(
    cells: np.ndarray, nuclei: np.ndarray, origin: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Per cell in this core: pixel area, integer moments (global), nucleus pixels."""
    flat = cells.ravel()
    fg = flat > 0
    ids, inv = np.unique(flat[fg], return_inverse=True)
    rr, cc = np.indices(cells.shape, dtype=np.int64)
    area = np.bincount(inv, minlength=len(ids)).astype(np.int64)
    sum_r = (
        np.bincount(inv, weights=rr.ravel()[fg], minlength=len(ids)).astype(np.int64)
        + area * origin[0]
    )
    sum_c = (
        np.bincount(inv, weights=cc.ravel()[fg], minlength=len(ids)).astype(np.int64)
        + area * origin[1]
    )
    nuc = (nuclei.ravel()[fg] > 0).astype(np.int64)
    nuc_area = np.bincount(inv, weights=nuc, minlength=len(ids)).astype(np.int64)
    return {
        "cell": ids.astype(np.int64),
        "area": area,
        "sum_r": sum_r,
        "sum_c": sum_c,
        "nuc_area": nuc_area,
    }


def count_triples(cell_id: np.ndarray, gene: np.ndarray, n_genes: int) -> dict[str, np.ndarray]:
    """(cell, gene, count) for assigned transcripts: the tile's slice of the count matrix."""
    keep = cell_id > 0
    key = cell_id[keep] * n_genes + gene[keep].astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return {
        "cell": uniq // n_genes,
        "gene": (uniq % n_genes).astype(np.int32),
        "count": counts.astype(np.int64),
    }

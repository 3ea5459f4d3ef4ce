"""Global IDs: one per owned object, numbered by centroid position, not by tile.

Numbering in raster order of the exact centroid (integer moments, so every tiling computes the
same value) makes the IDs themselves independent of the tile size: a chip run with one tile
and with a hundred gives identical label arrays, not just identical up to renumbering.
"""

from __future__ import annotations

import numpy as np


def assign_global_ids(
    moments: list[tuple[np.ndarray, np.ndarray, np.ndarray]], start: int = 1
) -> list[np.ndarray]:
    """Given per-tile (area, sum_r, sum_c), return per-tile lookup tables local -> global.

    Table ``t`` has length ``n_t + 1`` with ``t[0] == 0``.
    """
    counts = [len(a) for a, _, _ in moments]
    if sum(counts) == 0:
        return [np.zeros(1, np.uint32) for _ in moments]
    area = np.concatenate([a for a, _, _ in moments]).astype(np.int64)
    sr = np.concatenate([r for _, r, _ in moments]).astype(np.int64)
    sc = np.concatenate([c for _, _, c in moments]).astype(np.int64)
    tile = np.repeat(np.arange(len(moments)), counts)
    cy = sr / area
    cx = sc / area
    order = np.lexsort((tile, area, cx, cy))
    gid = np.empty(len(order), np.int64)
    gid[order] = np.arange(start, start + len(order))
    if gid[-1:].size and gid.max() >= np.iinfo(np.uint32).max:
        raise OverflowError("more objects than fit in uint32 labels")
    tables = []
    pos = 0
    for n in counts:
        t = np.zeros(n + 1, np.uint32)
        t[1:] = gid[pos : pos + n]
        tables.append(t)
        pos += n
    return tables

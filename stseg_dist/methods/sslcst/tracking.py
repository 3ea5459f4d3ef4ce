"""Gradient-flow tracking on the spot grid: follow the predicted directions to a nucleus.

Like Cellpose's flow following, but on the 16 quantised directions: every start spot steps one
spot length along the direction predicted where it stands, until it stands on a nucleus (it
joins that nucleus) or a spot that cannot reach any (``alive`` False), or runs out of steps.
The walked offset is accumulated from zero and added to the integer start, so a path is bitwise
the same in every window, wherever the window begins.
"""

from __future__ import annotations

import numpy as np


def track(
    starts_r: np.ndarray,
    starts_c: np.ndarray,
    direction: np.ndarray,
    alive: np.ndarray,
    nuclei: np.ndarray,
    steps: np.ndarray,
    max_steps: int,
) -> np.ndarray:
    """Nucleus ID reached from each start spot (0 = none within ``max_steps``).

    ``direction`` (H, W) holds a class per spot (read only where ``alive``), ``steps`` the (n, 2)
    unit steps (dy, dx) of the classes, ``nuclei`` (H, W) the IDs to reach.
    """
    h, w = nuclei.shape
    r0 = np.asarray(starts_r, np.int64)
    c0 = np.asarray(starts_c, np.int64)
    out = np.zeros(len(r0), np.int64)
    out_at = nuclei[r0, c0].astype(np.int64)
    done = out_at > 0
    out[done] = out_at[done]
    active = np.flatnonzero(~done)
    off = np.zeros((len(r0), 2), np.float64)
    for _ in range(max_steps):
        if not len(active):
            break
        r = r0[active] + np.floor(off[active, 0] + 0.5).astype(np.int64)
        c = c0[active] + np.floor(off[active, 1] + 0.5).astype(np.int64)
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        ok = inside.copy()
        ok[inside] = alive[r[inside], c[inside]]
        active, r, c = active[ok], r[ok], c[ok]
        off[active] += steps[direction[r, c]]
        r = r0[active] + np.floor(off[active, 0] + 0.5).astype(np.int64)
        c = c0[active] + np.floor(off[active, 1] + 0.5).astype(np.int64)
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        hit = np.zeros(len(active), np.int64)
        hit[inside] = nuclei[r[inside], c[inside]]
        out[active[hit > 0]] = hit[hit > 0]
        active = active[(hit == 0) & inside]
    return out

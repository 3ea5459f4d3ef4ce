"""Assemble the global label image over any window from the owned objects of nearby tiles."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .ownership import OwnedObjects


def paint_window(
    window: tuple[int, int, int, int],
    owned: Iterable[tuple[OwnedObjects, np.ndarray]],
) -> np.ndarray:
    """Global labels over ``window`` (r0, r1, c0, c1) from (owned objects, local->global table).

    Where two objects claim a pixel (only possible when a segmentation saw an object cut), the
    larger global ID wins: a rule that does not depend on the order tiles are painted in.
    """
    r0, r1, c0, c1 = window
    out = np.zeros((r1 - r0, c1 - c0), np.uint32)
    for obj, table in owned:
        if obj.labels.size == 0:
            continue
        or0, oc0 = obj.offset
        oh, ow = obj.labels.shape
        ir0, ir1 = max(r0, or0), min(r1, or0 + oh)
        ic0, ic1 = max(c0, oc0), min(c1, oc0 + ow)
        if ir0 >= ir1 or ic0 >= ic1:
            continue
        crop = obj.labels[ir0 - or0 : ir1 - or0, ic0 - oc0 : ic1 - oc0]
        glob = table[crop]
        dst = out[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0]
        np.maximum(dst, glob, out=dst)
    return out

"""Splitting a foreground mask into nuclei by rules whose reach is bounded, so that any window
that holds a nucleus and a fixed margin around it segments that nucleus identically.

A watershed floods from its markers across whole connected components, and a marker suppression
(``peak_local_max``'s ``min_distance``) can chain along a cluster: in a cluster of touching
nuclei larger than the tile halo, where a tile edge cuts decides how nuclei far from the cut are
split. Here every step only looks a fixed distance away, and ties are broken by position:

1. holes are filled only when they fit in a ``hole_px`` box (a ring of nuclei keeps its inside);
2. the distance to the background is clamped at ``dmax_px``;
3. pixels are ranked by that distance, ties by raster position (the same order in every window,
   since windows are translations of the chip);
4. each pixel points at its best 8-neighbour; a pixel with none better is a summit; a summit is a
   nucleus seed if it is the best pixel connected to it within ``radius_px`` (a box), else it
   points at that best pixel;
5. a pixel joins the seed its pointers reach, provided the path stays within ``extent_px`` of the
   pixel; otherwise it stays background.

Step 4-5 is the steepest-ascent form of a watershed on the distance map; seeds play the role of
``peak_local_max``'s peaks (one per ``radius_px`` box of a connected region). A ``surface`` added
to the clamped distance (e.g. the smoothed stain, so that touching nuclei with no neck split at
their darker seam) makes it a watershed of both; ``keep`` and ``peak_fraction`` then drop the pixels
whose ``keep`` value is below that fraction of their seed's (each nucleus cut at its own level).
``skimage.segmentation.watershed`` is not used because its floods cross whole clusters: where a
tile edge cuts a long cluster changes labels far from the cut (0.3% of nucleus pixels on the chain
chip of tests/test_tile_invariance.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_8 = np.ones((3, 3), bool)


def fill_small_holes(mask: np.ndarray, hole_px: int) -> np.ndarray:
    """``mask`` with its background regions (4-connected) filled when their bounding box fits in
    ``hole_px`` x ``hole_px`` and they do not touch the array edge.
    """
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask
    h, w = mask.shape
    box = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(bg)])
    small = (
        (box[:, 0] > 0)
        & (box[:, 2] > 0)
        & (box[:, 1] < h)
        & (box[:, 3] < w)
        & (box[:, 1] - box[:, 0] <= hole_px)
        & (box[:, 3] - box[:, 2] <= hole_px)
    )
    return mask | np.concatenate([[False], small])[bg]


def _ranks(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rank of each mask pixel (0 = highest distance; ties: earlier raster position first);
    background pixels get a rank above every mask pixel's.
    """
    flat = np.flatnonzero(mask)
    order = np.lexsort((flat, -dist.ravel()[flat]))
    rank = np.full(mask.size, np.iinfo(np.int64).max, np.int64)
    rank[flat[order]] = np.arange(len(flat))
    return rank.reshape(mask.shape)


def _parents(rank: np.ndarray) -> np.ndarray:
    """Flat index of each pixel's best 8-neighbour (or itself when none is better)."""
    h, w = rank.shape
    big = np.iinfo(np.int64).max
    padded = np.pad(rank, 1, constant_values=big)
    best = rank.copy()
    step = np.zeros(rank.shape, np.int64)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            nb = padded[1 + dr : h + 1 + dr, 1 + dc : w + 1 + dc]
            better = nb < best
            best = np.where(better, nb, best)
            step = np.where(better, dr * w + dc, step)
    return np.arange(h * w, dtype=np.int64).reshape(h, w) + step


def split_nuclei(
    mask: np.ndarray,
    *,
    hole_px: int,
    dmax_px: float,
    radius_px: int,
    extent_px: int,
    surface: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    peak_fraction: float | None = None,
    dynamic: float = 0.0,
    dynamic_radius_px: int = 0,
    shape: np.ndarray | None = None,
) -> np.ndarray:
    """Nucleus labels (uint32, any positive IDs) of a boolean foreground ``mask``; ``surface`` is
    added to the distance (clamped at ``dmax_px``, divided by it) when given. The distance is to
    the background of ``mask``, or of ``shape & mask`` (small holes filled) when ``shape`` is given:
    a tighter mask whose necks separate nuclei that the foreground joins.
    """
    h, w = mask.shape
    out = np.zeros((h, w), np.uint32)
    inner = None if shape is None else fill_small_holes(shape & mask, hole_px)
    mask = fill_small_holes(mask, hole_px)
    if not mask.any():
        return out
    inner = mask if inner is None else inner
    dist = (
        np.minimum(ndi.distance_transform_edt(inner), dmax_px)
        if not inner.all()
        else np.full((h, w), dmax_px)
    )
    if surface is not None:
        dist = (dist / dmax_px + surface).astype(np.float32)
    rank = _ranks(dist, mask)
    nxt = _parents(rank).ravel()
    flat_rank = rank.ravel()
    summits = np.flatnonzero(mask.ravel() & (nxt == np.arange(h * w)))
    # A summit that is the best pixel of its whole box is a seed at once; the others look only at
    # what is connected to them inside the box (a neighbour nucleus across a gap does not count).
    size = 2 * radius_px + 1
    box_min = ndi.minimum_filter(
        rank, size=size, mode="constant", cval=np.iinfo(np.int64).max
    ).ravel()
    for s in summits[box_min[summits] < flat_rank[summits]]:
        r, c = divmod(int(s), w)
        r0, r1, c0, c1 = (
            max(0, r - radius_px),
            min(h, r + radius_px + 1),
            max(0, c - radius_px),
            min(w, c + radius_px + 1),
        )
        lab, _ = ndi.label(mask[r0:r1, c0:c1], structure=_8)
        sub = np.where(lab == lab[r - r0, c - c0], rank[r0:r1, c0:c1], np.iinfo(np.int64).max)
        k = int(np.argmin(sub))
        if sub.flat[k] < flat_rank[s]:
            nxt[s] = (r0 + k // (c1 - c0)) * w + c0 + k % (c1 - c0)
    if dynamic > 0 and dynamic_radius_px > 0:
        # h-maxima in a bounded box: a seed that reaches a better pixel within dynamic_radius_px
        # without descending more than ``dynamic`` is a texture or noise peak, not a nucleus
        big, rad = np.iinfo(np.int64).max, dynamic_radius_px
        for s in summits[nxt[summits] == summits]:
            r, c = divmod(int(s), w)
            r0, r1 = max(0, r - rad), min(h, r + rad + 1)
            c0, c1 = max(0, c - rad), min(w, c + rad + 1)
            near = mask[r0:r1, c0:c1] & (dist[r0:r1, c0:c1] >= dist.flat[s] - dynamic)
            lab, _ = ndi.label(near, structure=_8)
            sub = np.where(lab == lab[r - r0, c - c0], rank[r0:r1, c0:c1], big)
            k = int(np.argmin(sub))
            if sub.flat[k] < flat_rank[s]:
                nxt[s] = (r0 + k // (c1 - c0)) * w + c0 + k % (c1 - c0)
    # Follow the pointers from every mask pixel; a path that leaves the pixel's extent box fails.
    pix = np.flatnonzero(mask.ravel())
    pr, pc = np.divmod(pix, w)
    cur = pix.copy()
    seed_of = np.zeros(len(pix), np.int64)  # flat index of the seed reached, -1 if none
    active = np.arange(len(pix))
    while len(active):
        n = nxt[cur[active]]
        done = n == cur[active]
        seed_of[active[done]] = cur[active[done]]
        active, n = active[~done], n[~done]
        nr, nc = np.divmod(n, w)
        inside = (np.abs(nr - pr[active]) <= extent_px) & (np.abs(nc - pc[active]) <= extent_px)
        seed_of[active[~inside]] = -1
        active, n = active[inside], n[inside]
        cur[active] = n
    ok = seed_of >= 0
    if keep is not None and peak_fraction is not None:
        k = keep.ravel()
        ok &= k[pix] >= peak_fraction * k[np.maximum(seed_of, 0)]
    _, ids = np.unique(seed_of[ok], return_inverse=True)
    out.ravel()[pix[ok]] = ids.astype(np.uint32) + 1
    return out


def reach_px(
    *, hole_px: int, dmax_px: float, radius_px: int, extent_px: int, dynamic_radius_px: int = 0, **_
) -> int:
    """How far from a pixel the mask may differ before the pixel's label can change."""
    radius = max(radius_px, dynamic_radius_px)
    return int(extent_px + radius + np.ceil(dmax_px) + 1 + hole_px + 1)

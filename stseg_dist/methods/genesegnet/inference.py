"""Overlapping-window inference and the turn from (probability, offsets) to cells.

Windows of side ``P`` start at multiples of ``P/2`` on the chip-wide bin grid, not the tile's,
so every tile cuts the same windows around a bin; each window's output is weighted by a
separable sin^2 taper, whose shifted copies at half-window steps sum to exactly 1, so the merge
has no grid seams and no weight at a window's padded rim dominates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


def taper(size: int) -> np.ndarray:
    """sin^2 weights: at a stride of size/2, overlapping copies sum to 1."""
    return np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2


def window_starts(origin: int, length: int, size: int, stride: int) -> np.ndarray:
    """Global starts (multiples of ``stride``) of every window overlapping
    [origin, origin+length).
    """
    first = (origin - size) // stride + 1
    last = -(-(origin + length) // stride) - 1
    return np.arange(first, last + 1) * stride


def sliding_predict(
    predict: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    origin: tuple[int, int],
    size: int,
    stride: int | None = None,
    batch: int = 16,
) -> np.ndarray:
    """Blend ``predict`` over global-grid windows of ``inputs`` (C, h, w) -> (K, h, w).

    ``predict`` maps a batch (B, C, size, size) to (B, K, size, size). Outside ``inputs`` the
    windows are zero-padded; that only touches outputs within a window of the array's edge.
    """
    stride = stride or size // 2
    _, h, w = inputs.shape
    rs = window_starts(origin[0], h, size, stride) - origin[0]
    cs = window_starts(origin[1], w, size, stride) - origin[1]
    pr, pc = -int(rs[0]), -int(cs[0])
    ph, pw = int(rs[-1]) + size + pr, int(cs[-1]) + size + pc
    padded = np.zeros((inputs.shape[0], ph, pw), np.float32)
    padded[:, pr : pr + h, pc : pc + w] = inputs
    t = taper(size)
    weight2d = (t[:, None] * t[None, :]).astype(np.float32)
    acc = None
    wsum = np.zeros((ph, pw), np.float32)
    starts = [(int(r) + pr, int(c) + pc) for r in rs for c in cs]
    for s in range(0, len(starts), batch):
        chunk = starts[s : s + batch]
        out = predict(np.stack([padded[:, r : r + size, c : c + size] for r, c in chunk]))
        if acc is None:
            acc = np.zeros((out.shape[1], ph, pw), np.float32)
        for k, (r, c) in enumerate(chunk):
            acc[:, r : r + size, c : c + size] += out[k] * weight2d
            wsum[r : r + size, c : c + size] += weight2d
    return acc[:, pr : pr + h, pc : pc + w] / wsum[pr : pr + h, pc : pc + w]


def torch_predictor(
    model, device: str, offset_scale: float, n_maps: int = 1
) -> Callable[[np.ndarray], np.ndarray]:
    """(B, 2, P, P) inputs -> (B, n_maps + 2, P, P): cell probability (and centre map: ``n_maps``
    2) and offsets in bins.
    """
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.as_tensor(x, device=device))
            out = torch.cat([torch.sigmoid(y[:, :n_maps]), y[:, n_maps:] * offset_scale], 1)
        return out.cpu().numpy()

    return predict


def assign_cells(
    prob: np.ndarray,
    offsets: np.ndarray,
    ids: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    reach_bins: float,
    tolerance_bins: float,
) -> np.ndarray:
    """Each confident bin follows its offset and joins the nucleus whose centre it lands near.

    A bin joins nothing when it lands farther than ``tolerance_bins`` from every nucleus centre,
    or when that nucleus is farther than ``reach_bins`` from the bin itself. Each bin is decided
    alone, so a window's result at a bin depends only on the bin's prediction and the nuclei
    near it: what keeps tiles seamless.
    """
    labels = np.zeros(prob.shape, np.int64)
    if not len(ids):
        return labels
    rr, cc = np.nonzero(prob >= threshold)
    if not len(rr):
        return labels
    here = np.stack([rr + 0.5, cc + 0.5], axis=1)
    land = here + offsets[:, rr, cc].T
    dist, idx = cKDTree(centroids).query(land)
    ok = (dist <= tolerance_bins) & (np.linalg.norm(here - centroids[idx], axis=1) <= reach_bins)
    labels[rr[ok], cc[ok]] = ids[idx[ok]]
    return labels


def predicted_centres(
    centre: np.ndarray,
    ids: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    radius_bins: float,
    tolerance_bins: float,
    fallback: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(IDs, (n, 2) centres): each nucleus's centre as the network predicts it.

    A predicted centre is a local maximum of the centre map (over a disc of ``radius_bins``) at or
    above ``threshold``; each is matched to the nearest nucleus centroid within ``tolerance_bins``,
    and a nucleus matched by several keeps the strongest (ties: the first in raster order of the
    window, the same order as the chip's). A nucleus no centre matches keeps its centroid when
    ``fallback``, else it has no centre (its bins join nothing). Every step looks only a disc of
    the map and the nuclei near each bin, so a core bin's result does not depend on the window.
    """
    if not len(ids):
        return ids, centroids
    r = max(1, int(round(radius_bins)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    peak = (centre >= threshold) & (
        centre == ndi.maximum_filter(centre, footprint=yy**2 + xx**2 <= r * r, mode="nearest")
    )
    pr, pc = np.nonzero(peak)
    out = centroids.astype(np.float64).copy()
    found = np.zeros(len(ids), bool)
    if len(pr):
        pos = np.stack([pr + 0.5, pc + 0.5], axis=1)
        dist, idx = cKDTree(centroids).query(pos)
        ok = dist <= tolerance_bins
        pos, idx, val = pos[ok], idx[ok], centre[pr[ok], pc[ok]]
        order = np.lexsort((np.arange(len(val)), -val))  # strongest first; ties by raster order
        first = np.unique(idx[order], return_index=True)[1]
        best = order[first]
        out[idx[best]] = pos[best]
        found[idx[best]] = True
    if fallback:
        return ids, out
    return ids[found], out[found]


def assign_to_centres(
    prob: np.ndarray,
    centre: np.ndarray,
    offsets: np.ndarray,
    ids: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    reach_bins: float,
    tolerance_bins: float,
    centre_threshold: float,
    fallback: bool,
) -> np.ndarray:
    """The paper variant's cells: confident bins follow their offsets to the predicted centres
    (:func:`predicted_centres`), each named by its nucleus; reach and tolerance as in
    :func:`assign_cells` (the reach measured from the nucleus centroid).
    """
    cids, centres = predicted_centres(
        centre, ids, centroids, centre_threshold, tolerance_bins, tolerance_bins, fallback
    )
    labels = assign_cells(prob, offsets, cids, centres, threshold, np.inf, tolerance_bins)
    if len(cids):  # the reach from the nucleus itself
        pos = np.searchsorted(ids, labels.clip(min=0))
        pos = np.minimum(pos, len(ids) - 1)
        rr, cc = np.mgrid[: labels.shape[0], : labels.shape[1]]
        d = np.hypot(rr + 0.5 - centroids[pos, 0], cc + 0.5 - centroids[pos, 1])
        labels[(labels > 0) & (d > reach_bins)] = 0
    return labels


def mean_cell_iou(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean IoU, over every cell ID of every patch, between two label maps of the same patches."""
    ious = []
    for x, y in zip(a, b, strict=False):
        for cid in np.union1d(np.unique(x), np.unique(y)):
            if cid <= 0:  # background and left-out bins
                continue
            mx, my = x == cid, y == cid
            ious.append((mx & my).sum() / (mx | my).sum())
    return float(np.mean(ious)) if ious else 1.0

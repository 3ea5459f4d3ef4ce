"""The oversize split: a nucleus well above the chip's learned single-nucleus area is cut in two
where its stain says it holds two nuclei.

After the watershed (:mod:`.split`), a label larger than ``area_factor`` x the learned nucleus
area (a disc of the learned diameter) is bisected by 2-means on its pixel coordinates, each pixel
weighted by its stain. The cut is kept only if both parts look like nuclei (one piece each, at
least ``MIN_PART_AREA`` x that area, solidity at least ``MIN_PART_SOLIDITY``) and the stain mass,
projected on the line joining the two parts' centres, dips by at least ``dip`` between them: two
nuclei have a darker seam, one large nucleus does not. Each part is tried again, so a blob of
three nuclei can become three. Area alone does not decide: on the Xenium crop most labels over
1.5 x the learned area are single large nuclei (docs/nuclei_classical.md).

Only the label's own pixels and the stain under them are read, so a nucleus is split identically
in every window that holds it (the backend's halo already holds whole nuclei). Coordinates are
taken from the label's bounding box, so the arithmetic is the same wherever the window starts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

MIN_PART_AREA = 0.4  # each part, times the learned nucleus area
MIN_PART_SOLIDITY = 0.85
PROFILE_SIGMA = 0.05  # smoothing of the projected stain profile, in diameters
_8 = np.ones((3, 3), bool)


def seam_dip(coords: np.ndarray, weight: np.ndarray, a: np.ndarray, b: np.ndarray, d: float):
    """How far the stain mass, projected on the segment from centre ``a`` to ``b`` (1-px bins,
    smoothed over PROFILE_SIGMA x ``d``), drops between them: 1 - its minimum there over the
    lower of its two ends (0: no dip).
    """
    length = float(np.linalg.norm(b - a))
    if length < 2:
        return 0.0
    p = (coords - a) @ ((b - a) / length)
    lo = np.floor(p.min())
    profile = np.bincount(np.floor(p - lo).astype(np.int64), weights=weight).astype(float)
    profile = ndi.gaussian_filter1d(profile, PROFILE_SIGMA * d, mode="constant")
    ia, ib = np.clip([int(round(-lo)), int(round(length - lo))], 0, len(profile) - 1)
    ends = min(profile[ia], profile[ib])
    if ib - ia < 2 or ends <= 0:
        return 0.0
    return float(1.0 - profile[ia : ib + 1].min() / ends)


def bisect(mask: np.ndarray, stain: np.ndarray, area: float, d: float, dip: float):
    """The two parts (boolean masks) of ``mask`` if it holds two nuclei by the rules above, else
    None. ``stain`` is on the same grid; ``area`` is the learned nucleus area (px).
    """
    rr, cc = np.nonzero(mask)
    coords = np.stack([rr, cc], axis=1).astype(np.float64)
    weight = np.maximum(stain[rr, cc].astype(np.float64), 1e-3)
    km = KMeans(n_clusters=2, n_init=4, random_state=0).fit(coords, sample_weight=weight)
    parts = []
    for j in (0, 1):
        part = np.zeros(mask.shape, bool)
        part[rr[km.labels_ == j], cc[km.labels_ == j]] = True
        if part.sum() < MIN_PART_AREA * area or ndi.label(part, structure=_8)[1] != 1:
            return None
        if regionprops(part.astype(np.uint8))[0].solidity < MIN_PART_SOLIDITY:
            return None
        parts.append(part)
    a, b = km.cluster_centers_
    if seam_dip(coords, weight, a, b, d) < dip:
        return None
    return parts


def split_oversize(
    labels: np.ndarray, stain: np.ndarray, d: float, area_factor: float, dip: float
) -> np.ndarray:
    """``labels`` with every label over ``area_factor`` x the disc of diameter ``d`` (px) cut into
    the nuclei its stain shows (:func:`bisect`, repeated on each part); new parts get new IDs.
    """
    area = np.pi * d * d / 4
    out = labels.copy()
    next_id = int(labels.max()) + 1
    with threadpool_limits(1):  # many tiny fits: threads cost 10x more than they save here
        for i, box in enumerate(ndi.find_objects(labels), start=1):
            if box is None or np.count_nonzero(labels[box] == i) <= area_factor * area:
                continue
            todo, pieces = [labels[box] == i], []
            while todo:
                m = todo.pop()
                big = m.sum() > area_factor * area
                parts = bisect(m, stain[box], area, d, dip) if big else None
                if parts is None:
                    pieces.append(m)
                else:
                    todo += parts
            sub = out[box]
            for m in pieces[1:]:
                sub[m] = next_id
                next_id += 1
    return out

"""Soft masks: a smooth prior of where a nucleus's cell may extend.

sigmoid(signed distance to the nucleus outline / tau), positive inside. For elongated nuclei the
distance is rescaled by direction (the UCS scaled softmask): along the major axis by sqrt(e),
along the minor axis by 1/sqrt(e), e the ellipse eccentricity, so cells grow along their
nucleus's long axis. Round nuclei keep the plain distance (the paper's scaling diverges as
e -> 0), and the scales are clipped, so a nearly round nucleus never gets an extreme mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

MIN_ECCENTRICITY = 0.6


def ellipse_axes(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(centre row, centre col, orientation, eccentricity) from second moments; a, b semi-axes."""
    rr, cc = np.nonzero(mask)
    cy, cx = rr.mean(), cc.mean()
    if len(rr) < 3:
        return cy, cx, 0.0, 0.0, 0.0
    cov = np.cov(np.stack([rr - cy, cc - cx]))
    evals, evecs = np.linalg.eigh(cov)
    a2, b2 = max(evals[1], 1e-9), max(evals[0], 1e-9)
    major = evecs[:, 1]  # (drow, dcol)
    theta = float(np.arctan2(major[0], major[1]))
    ecc = float(np.sqrt(max(0.0, 1.0 - b2 / a2)))
    return cy, cx, theta, ecc, float(np.sqrt(a2 / b2))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the outline: positive inside the nucleus, negative outside (in bins)."""
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return np.where(mask, inside, -outside).astype(np.float32)


def softmask(mask: np.ndarray, tau: float, scaled: bool = True) -> np.ndarray:
    sd = signed_distance(mask)
    if scaled and mask.sum() >= 3:
        cy, cx, theta, ecc, _ = ellipse_axes(mask)
        if ecc >= MIN_ECCENTRICITY:
            s_major = float(np.clip(np.sqrt(ecc), 0.5, 1.0))
            s_minor = float(np.clip(1.0 / np.sqrt(ecc), 1.0, 2.0))
            h, w = mask.shape
            rr, cc = np.mgrid[0:h, 0:w]
            phi = np.arctan2(rr - cy, cc - cx) - theta
            g = np.sqrt((s_major * np.cos(phi)) ** 2 + (s_minor * np.sin(phi)) ** 2)
            sd = np.where(sd < 0, sd * g, sd).astype(np.float32)
    return (1.0 / (1.0 + np.exp(-sd / tau))).astype(np.float32)

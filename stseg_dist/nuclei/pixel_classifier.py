"""A pixel classifier trained on the chip's own confident nuclei (``nuclei.classical.
pixel_classifier``): no downloaded weights.

The classical backend's first pass labels the chip; its confident nuclei (near the learned size,
convex) give pseudo-labels: their cores are *nucleus interior*, their rims, the seams between
them and the far background are *not interior*, and everything else (merged blobs, dim
nuclei, glow) is left unlabelled for the classifier to decide. A random forest on scikit-image's
multiscale features (intensity, gradient, Hessian eigenvalues at 0.05..0.5 diameters) learns
interior from them in ``prepare``, from the pixels of a chip-wide lattice, so the training set
(and the model) are the same at any tiling. Each tile then adds the smoothed interior
probability to the seed surface of the split. Every feature looks at most
:func:`feature_reach_px` away, so labels stay tile-exact.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import multiscale_basic_features
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

SIGMAS = (0.05, 0.5)  # feature scales, in nucleus diameters
N_SIGMA = 4
STRIDE = 3  # training pixels: every STRIDE-th row and column of the chip
PER_CLASS = 10000  # at most this many training pixels per class
N_TREES, MAX_DEPTH = 30, 10
AREA_RANGE = (0.4, 1.6)  # confident nuclei: area within this times the learned size's disc
MIN_SOLIDITY = 0.9
CORE = 0.12  # interior: at least this many diameters inside the nucleus's own edge
FAR = 0.3  # background: outside the foreground and this many diameters from any nucleus
UNLABELLED, OTHER, INTERIOR = 0, 1, 2


def _sigmas(d: float) -> tuple[float, float]:
    return SIGMAS[0] * d, SIGMAS[1] * d


def feature_reach_px(d: float) -> int:
    """How far the features look: the widest Gaussian's radius, plus the Sobel and the Hessian's
    two finite differences.
    """
    return int(4 * _sigmas(d)[1] + 0.5) + 2


def pixel_features(x: np.ndarray, d: float) -> np.ndarray:
    """Multiscale intensity, edge and texture features of the normalised stain (h, w, k)."""
    lo, hi = _sigmas(d)
    return multiscale_basic_features(
        np.ascontiguousarray(x, dtype=np.float32),
        intensity=True,
        edges=True,
        texture=True,
        sigma_min=lo,
        sigma_max=hi,
        num_sigma=N_SIGMA,
        workers=1,
    ).astype(np.float32)


def pseudo_labels(labels: np.ndarray, foreground: np.ndarray, d: float) -> np.ndarray:
    """Training classes from a first pass's ``labels``: INTERIOR (cores of confident nuclei),
    OTHER (their rims and seams, and background far from any nucleus), UNLABELLED (the rest).
    """
    disc = np.pi * d * d / 4
    good = np.zeros(int(labels.max()) + 1, bool)
    for p in regionprops(labels):
        good[p.label] = (
            AREA_RANGE[0] * disc <= p.area <= AREA_RANGE[1] * disc and p.solidity >= MIN_SOLIDITY
        )
    confident = good[labels]
    edge = find_boundaries(labels, mode="inner")
    inside = ndi.distance_transform_edt((labels > 0) & ~edge)
    outside = ndi.distance_transform_edt(labels == 0)
    y = np.zeros(labels.shape, np.uint8)
    y[~foreground & (outside >= FAR * d)] = OTHER
    rim = find_boundaries(labels, mode="thick") & (outside < 2)
    y[ndi.binary_dilation(confident) & rim] = OTHER
    y[confident & (inside >= CORE * d)] = INTERIOR
    return y


def lattice(shape: tuple[int, int], origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (local) of the chip-wide training lattice in an array whose first pixel
    is at chip pixel ``origin``.
    """
    return tuple(np.arange((-o) % STRIDE, n, STRIDE) for n, o in zip(shape, origin, strict=True))


def training_set(
    flat_index: np.ndarray, features: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The samples the forest is fitted on: the lattice samples (in any order) sorted by chip
    position, then at most PER_CLASS of each class drawn with a fixed seed. The same at any
    tiling; plain arrays, so they go into the saved state (which holds no pickle).
    """
    order = np.argsort(flat_index, kind="stable")
    features, classes = features[order], classes[order]
    rng = np.random.default_rng(0)
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(classes == k))[:PER_CLASS] for k in (OTHER, INTERIOR)]
        )
    )
    return np.ascontiguousarray(features[keep], np.float32), classes[keep].astype(np.uint8)


_MODELS: dict[str, object] = {}  # fitted forests by their training set's digest (one per process)


def fit(features: np.ndarray, classes: np.ndarray):
    """The random forest of a training set (fixed seed, one thread: the same model in every
    worker), fitted once per process; None when the set lacks either class.
    """
    if len(np.unique(classes)) < 2:
        return None
    key = hashlib.sha256(features.tobytes() + classes.tobytes()).hexdigest()
    if key not in _MODELS:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(
            n_estimators=N_TREES, max_depth=MAX_DEPTH, min_samples_leaf=5, random_state=0, n_jobs=1
        )
        _MODELS.clear()
        _MODELS[key] = model.fit(features, classes)
    return _MODELS[key]


def interior_probability(model, x: np.ndarray, mask: np.ndarray, d: float) -> np.ndarray:
    """P(nucleus interior) at each pixel of ``mask`` (0 elsewhere), float32."""
    out = np.zeros(x.shape, np.float32)
    if not mask.any():
        return out
    features = pixel_features(x, d)[mask]
    col = list(model.classes_).index(INTERIOR)
    out[mask] = model.predict_proba(features)[:, col]
    return out

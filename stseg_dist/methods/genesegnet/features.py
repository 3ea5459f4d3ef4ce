"""GeneSegNet inputs on the chip-anchored bin grid: the nuclear stain and an RNA location map.

Bins are ``factor`` x ``factor`` image pixels of the shared grid (``BinGrid`` in
``methods/common/bins.py``, built from a factor): bin ``j`` covers global pixels
``j*factor .. j*factor+factor-1``, whatever the window, so two tiles that both see a bin compute
the same value for it (but for bins within the RNA kernel's reach of a window edge, which the
halo keeps away from the core). Coordinates on the grid are in bin units with bin ``j``'s centre
at ``j + 0.5``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..common.bins import BinGrid
from ..common.ownership import nucleus_centroids

#: Stain histogram resolution: 1/64 octave of (1 + value), up to 2^32; tiles' histograms add up
#: exactly, so chip-wide percentiles do not depend on the tiling.
HIST_PER_OCTAVE = 64
HIST_BINS = 32 * HIST_PER_OCTAVE + 1


def nucleus_centres(grid: BinGrid, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IDs, (n, 2) centroids in window-relative bin units) of the nuclei in a pixel window; a
    pixel's centre is at index + 0.5 and bins are ``grid.factor`` pixels wide.
    """
    ids, cr, cc = nucleus_centroids(nuclei, grid.pixel_origin)
    return ids, np.stack(
        [(cr + 0.5) / grid.factor - grid.origin[0], (cc + 0.5) / grid.factor - grid.origin[1]],
        axis=1,
    )


def bin_factor(pixel_size_um: float, bin_um: float) -> int:
    return max(1, int(round(bin_um / pixel_size_um)))


def gaussian_kernel(sigma_bins: float) -> np.ndarray:
    """Unnormalised 1D Gaussian (peak 1) truncated at 4 sigma: each transcript adds 1 at its bin."""
    radius = kernel_radius(sigma_bins)
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.exp(-(d**2) / (2 * sigma_bins**2))


def kernel_radius(sigma_bins: float) -> int:
    return int(math.ceil(4 * sigma_bins))


def rna_map(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], sigma_bins: float
) -> np.ndarray:
    """Sum over transcripts of exp(-|bin - transcript bin|^2 / 2 sigma^2), within 4 sigma per axis.

    The Gaussian is separable, so two 1D correlations of the count image give the exact sum.
    """
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    flat = rows[inside] * shape[1] + cols[inside]
    counts = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape).astype(np.float64)
    k = gaussian_kernel(sigma_bins)
    out = ndi.correlate1d(counts, k, axis=0, mode="constant")
    out = ndi.correlate1d(out, k, axis=1, mode="constant")
    return out.astype(np.float32)


def rna_mean(n_transcripts: int, n_bins: int, sigma_bins: float) -> float:
    """Expected RNA map value if the chip's transcripts were spread evenly (the input's unit)."""
    k = gaussian_kernel(sigma_bins)
    return max(n_transcripts / max(n_bins, 1) * float(k.sum()) ** 2, 1e-6)


def stain_histogram(values: np.ndarray) -> np.ndarray:
    """Counts of stain values on a fixed log scale (shared by every tile)."""
    v = np.maximum(np.asarray(values, np.float64).ravel(), 0.0)
    idx = np.minimum(np.floor(np.log2(1.0 + v) * HIST_PER_OCTAVE), HIST_BINS - 1).astype(np.int64)
    return np.bincount(idx, minlength=HIST_BINS)


def histogram_percentile(hist: np.ndarray, q: float) -> float:
    """The value at percentile ``q`` (bin centre) of a :func:`stain_histogram`."""
    total = hist.sum()
    if total == 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))
    return float(2.0 ** ((min(k, HIST_BINS - 1) + 0.5) / HIST_PER_OCTAVE) - 1.0)


def normalise_inputs(stain: np.ndarray, rna: np.ndarray, norm: dict) -> np.ndarray:
    """(2, h, w) network input: stain scaled by chip percentiles; RNA as log1p of its chip mean,
    or (the paper's, when ``norm`` has ``rna_clip``) the Gaussian sum clipped at ``rna_clip``, over
    it.
    """
    lo, hi = norm["stain_lo"], norm["stain_hi"]
    s = np.clip((stain - lo) / max(hi - lo, 1e-6), -1.0, 3.0)
    clip = norm.get("rna_clip")
    r = np.minimum(rna, clip) / clip if clip else np.log1p(rna / norm["rna_mean"])
    return np.stack([s, r]).astype(np.float32)

"""Classical nuclei segmentation of the nuclear stain; needs no weights.

Gaussian smoothing, optionally a white top-hat that removes the stain's slowly varying glow (dense
tissue and blurred mosaics lift whole regions above any global threshold), a *chip-wide*
threshold (Otsu over a histogram summed across tiles, so every tile cuts at the same level), then a distance-transform watershed that splits touching nuclei.
Each step is local, so an object away from the window edge is segmented identically in any
window: that is what makes the stitched output independent of the tile size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from ..errors import ConfigError, InputError
from .base import NucleiBackend

N_BINS = 4096


def smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma_px, truncate=4.0)


def enhance(image: np.ndarray, classical, pixel_size_um: float) -> np.ndarray:
    """The image the threshold applies to: smoothed, minus its grey opening (a white top-hat
    ``classical.background_um`` wide, odd in pixels) when that is set."""
    sm = smooth(image, classical.sigma_um / pixel_size_um)
    if classical.background_um:
        size = int(round(classical.background_um / pixel_size_um)) | 1
        sm = sm - ndi.grey_opening(sm, size=(size, size))
    return sm


def tile_histogram(smoothed_core: np.ndarray, vmax: float) -> np.ndarray:
    """Histogram of smoothed intensities on a fixed grid [0, vmax], summed across tiles."""
    hist, _ = np.histogram(smoothed_core, bins=N_BINS, range=(0.0, vmax))
    return hist.astype(np.int64)


def otsu_from_histogram(hist: np.ndarray, vmax: float) -> float:
    if hist.sum() == 0:
        raise InputError("nuclear stain is empty: no pixels to threshold")
    centers = (np.arange(N_BINS) + 0.5) * (vmax / N_BINS)
    if np.count_nonzero(hist) < 2:
        raise InputError(
            "nuclear stain has a single intensity everywhere; cannot find nuclei "
            "(set nuclei.classical.threshold or use nuclei.backend=vendor)"
        )
    return float(threshold_otsu(hist=(hist, centers)))


class ClassicalNuclei(NucleiBackend):
    name = "classical"

    def __init__(self, config, chip):
        super().__init__(config, chip)
        bg = config.nuclei.classical.background_um
        if bg is not None and bg <= 0:
            raise ConfigError(f"nuclei.classical.background_um must be positive or null, got {bg}")

    def _px(self, um: float) -> float:
        return um / self.chip.pixel_size_um

    def context_px(self) -> int:
        c = self.config.nuclei.classical
        return int(math.ceil(4 * self._px(c.sigma_um) + self._px(c.footprint_um)
                             + (self._px(c.background_um) if c.background_um else 0))) + 1

    def prepare(self, stats):
        c = self.config.nuclei.classical
        self.threshold = c.threshold if c.threshold is not None else stats["threshold"]

    def segment_array(self, image: np.ndarray) -> np.ndarray:
        c = self.config.nuclei.classical
        sm = enhance(image, c, self.chip.pixel_size_um)
        mask = sm > self.threshold
        min_area = max(1, int(round(c.min_area_um2 / self.chip.pixel_size_um**2)))
        mask = ndi.binary_fill_holes(mask)
        comps, n = ndi.label(mask)
        if n == 0:
            return np.zeros(image.shape, np.uint32)
        sizes = np.bincount(comps.ravel())
        keep = sizes >= min_area
        keep[0] = False
        mask = keep[comps]
        comps = np.where(mask, comps, 0)
        dist = ndi.distance_transform_edt(mask)
        min_dist = max(1, int(round(self._px(c.min_distance_um))))
        fp = max(3, int(round(self._px(c.footprint_um))) | 1)
        peaks = peak_local_max(
            dist,
            min_distance=min_dist,
            footprint=np.ones((fp, fp), bool),
            labels=comps,
            exclude_border=False,
        )
        markers = np.zeros(image.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # Components without a peak (flat or tiny) still become one nucleus each.
        has_peak = np.zeros(n + 1, bool)
        has_peak[comps[tuple(peaks.T)]] = True
        orphan = mask & ~has_peak[comps]
        if orphan.any():
            orphan_labels = comps * orphan
            markers = np.where(orphan, orphan_labels + len(peaks), markers)
        labels = watershed(-dist, markers, mask=mask)
        return labels.astype(np.uint32)

    def segment(self, tile):
        rows, cols = tile.window_slices
        image = self.chip.read_image(rows, cols, self.config.nuclei.channel)
        return self.segment_array(image)

"""Classical nuclei segmentation of the nuclear stain; needs no weights.

Gaussian smoothing, optionally a white top-hat that removes the stain's slowly varying glow (dense
tissue and blurred mosaics lift whole regions above any global threshold), a *chip-wide*
threshold (Otsu over a histogram summed across tiles in :meth:`ClassicalNuclei.prepare`, so every
tile cuts at the same level), then
touching nuclei are split by rules of bounded reach (:mod:`.split`). Every step looks only a fixed
distance away (:meth:`ClassicalNuclei.context_px`), and ties are broken by position, so a nucleus
is segmented identically in every window that holds it and that margin: 1 tile and any tiling
give the same labels.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..errors import InputError
from ..imaging.filters import smooth
from .base import NucleiBackend
from .split import reach_px, split_nuclei

N_BINS = 4096


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


def _core_max(backend: "ClassicalNuclei", tile) -> float:
    """Largest stain value in a tile's core (the histogram's range for a float image)."""
    rows, cols = tile.core_slices
    return float(np.nanmax(backend.chip.read_image(rows, cols, backend.config.nuclei.channel)))


def _core_histogram(backend: "ClassicalNuclei", vmax: float, tile) -> np.ndarray:
    """Histogram of the enhanced stain over a tile's core, enhanced on its window (as segment does)."""
    rows, cols = tile.window_slices
    image = backend.chip.read_image(rows, cols, backend.config.nuclei.channel)
    core = enhance(image, backend.config.nuclei.classical, backend.chip.pixel_size_um)[
        tile.core_in_window
    ]
    return tile_histogram(core, vmax)


class ClassicalNuclei(NucleiBackend):
    name = "classical"
    threshold: float | None = None

    def _px(self, um: float) -> float:
        return um / self.chip.pixel_size_um

    def _split_params(self) -> dict:
        """Sizes of the split (see :mod:`.split`), from the nominal nucleus diameter: a nucleus
        extends at most one diameter from its seed; holes up to half a diameter are filled."""
        c, d = self.config.nuclei.classical, self._px(self.config.nuclei.diameter_um)
        extent = max(2, int(round(d)))
        return {
            "hole_px": max(1, int(round(d / 2))),
            "dmax_px": float(extent),
            "radius_px": max(
                1,
                int(round(self._px(c.footprint_um))) // 2,
                int(round(self._px(c.min_distance_um))),
            ),
            "extent_px": extent,
        }

    def context_px(self) -> int:
        """Halo that makes the owned nuclei exact: a nucleus lies within 2 extents of its centroid,
        and a pixel's label depends on the image within the split's reach plus the filters'."""
        c = self.config.nuclei.classical
        enhance_px = int(4 * self._px(c.sigma_um) + 0.5)
        if c.background_um:
            enhance_px += (int(round(self._px(c.background_um))) | 1) - 1
        p = self._split_params()
        return 2 * p["extent_px"] + reach_px(**p) + enhance_px + 1

    def prepare(self, ctx):
        """The chip-wide threshold: ``nuclei.classical.threshold``, else Otsu over the histogram of
        every tile's core summed on one grid ([0, dtype max], or [0, the chip's max] for floats)."""
        c = self.config.nuclei.classical
        if c.threshold is not None:
            return {"threshold": float(c.threshold)}
        tiles = [t.index for t in ctx.grid]
        dtype = np.dtype(self.chip._image_array().dtype)
        if dtype.kind in "ui":
            vmax = float(np.iinfo(dtype).max)
        else:
            vmax = max([0.0, *ctx.map_tiles(partial(_core_max, self), tiles, desc="histogram")])
            vmax = vmax if math.isfinite(vmax) and vmax > 0 else 1.0
        total = np.sum(
            ctx.map_tiles(partial(_core_histogram, self, vmax), tiles, desc="histogram"), axis=0
        )
        return {"threshold": otsu_from_histogram(total, vmax)}

    def load(self, state):
        self.threshold = state["threshold"]

    def segment_array(self, image: np.ndarray) -> np.ndarray:
        c = self.config.nuclei.classical
        mask = enhance(image, c, self.chip.pixel_size_um) > self.threshold
        labels = split_nuclei(mask, **self._split_params())
        min_area = max(1, int(round(c.min_area_um2 / self.chip.pixel_size_um**2)))
        small = np.bincount(labels.ravel()) < min_area  # whole nuclei: exact wherever they are
        small[0] = False
        labels[small[labels]] = 0
        return labels

    def segment(self, tile):
        rows, cols = tile.window_slices
        image = self.chip.read_image(rows, cols, self.config.nuclei.channel)
        return self.segment_array(image)

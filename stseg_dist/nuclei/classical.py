"""Classical nuclei segmentation of the nuclear stain; needs no weights.

The stain is Gaussian-smoothed, optionally minus a white top-hat that removes its slowly varying
glow, and cut at a *chip-wide* threshold (Otsu over a histogram summed across tiles in
:meth:`ClassicalNuclei.prepare`); touching nuclei are split by rules of bounded reach
(:mod:`.split`) on the clamped distance to the background. The dense-tissue switches (on in the
Xenium and CosMx presets) add: the stain rescaled chip-wide (its robust percentiles over every
tile's core become 0 and 1), Otsu on the log of the stain (dim nuclei stay foreground), basins of
the distance plus the smoothed stain (seeds from shape and intensity), each nucleus cut at a
fraction of its own seed's brightness, and a nucleus size learned in ``prepare`` from a first pass
over the chip. The seam switches measure the distance on the pixels brighter than their
surroundings (``shape_mask: local``: touching nuclei that the foreground joins split at their
darker seam) and drop seeds that do not rise above a path to a better pixel (``seed_dynamic``).
``pixel_classifier`` (on in no preset) adds a random forest's nucleus-interior probability to the
seed surface, the forest fitted in ``prepare`` on the chip's own confident first-pass nuclei
(:mod:`.pixel_classifier`). ``oversize_split`` (on in the Xenium and CosMx presets) cuts a
nucleus well above the learned nucleus area in two where its stain dips between the halves
(:mod:`.oversize`).
Every step looks only a fixed distance away
(:meth:`ClassicalNuclei.context_px`), and ties are broken by position, so a nucleus is segmented
identically in every window that holds it and that margin: 1 tile and any tiling give the same
labels. Each part is a switch of ``nuclei.classical`` (docs/nuclei_classical.md has its measured
effect); all off is the previous backend.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..errors import InputError
from ..imaging.filters import smooth
from . import pixel_classifier as pc
from .base import NucleiBackend
from .config import ClassicalNucleiConfig
from .oversize import split_oversize
from .split import reach_px, split_nuclei

N_BINS = 4096
N_RAW_BINS = 65536  # the raw stain's histogram, for its percentiles (exact for 16-bit stains)
LOG_OFFSET = 0.05  # log(stain + this): the normalised background sits near 0
SIZE_RANGE = (0.5, 1.5)  # the learned diameter stays within this times nuclei.diameter_um
OVERSIZE_SIGMA = 0.05  # the stain the oversize split weighs pixels by, smoothed over this x d


def normalise(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The stain rescaled so the chip's ``lo`` and ``hi`` percentiles are 0 and 1 (float32)."""
    return (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)


def enhance(image: np.ndarray, classical, pixel_size_um: float) -> np.ndarray:
    """The image the threshold applies to: smoothed, minus its grey opening (a white top-hat
    ``classical.background_um`` wide, odd in pixels) when that is set.
    """
    sm = smooth(image, classical.sigma_um / pixel_size_um)
    if classical.background_um:
        size = int(round(classical.background_um / pixel_size_um)) | 1
        sm = sm - ndi.grey_opening(sm, size=(size, size))
    return sm


def local_contrast(image: np.ndarray, fine_px: float, coarse_px: float) -> np.ndarray:
    """Where the stain, smoothed over ``fine_px``, is above its surroundings (smoothed over
    ``coarse_px``): nuclei's insides, without the darker seams between touching nuclei nor the
    glow around them.
    """
    return smooth(image, fine_px) > smooth(image, coarse_px)


def valley_strength(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """How much the stain is a valley across, at ``sigma_px``: the larger eigenvalue of its
    Gaussian-derivative Hessian, times sigma^2 (float32). The dark seam between two touching
    nuclei is strongly curved upward across it; a nucleus's inside and a slope are not.
    """
    x = image.astype(np.float32)
    d2 = [ndi.gaussian_filter(x, sigma_px, order=o, truncate=4.0) for o in ((2, 0), (0, 2), (1, 1))]
    rr, cc, rc = d2
    half = (rr + cc) / 2
    return ((half + np.sqrt(((rr - cc) / 2) ** 2 + rc**2)) * sigma_px**2).astype(np.float32)


def foreground_value(enhanced: np.ndarray, foreground: str) -> np.ndarray:
    """What Otsu splits: the enhanced stain, or its log (``log_otsu``)."""
    if foreground == "log_otsu":
        return np.log(np.maximum(enhanced, 0) + LOG_OFFSET)
    return enhanced


def tile_histogram(values: np.ndarray, vmax: float, vmin: float = 0.0, bins: int = N_BINS):
    """Histogram of values on a fixed grid [vmin, vmax], summed across tiles."""
    hist, _ = np.histogram(values, bins=bins, range=(vmin, vmax))
    return hist.astype(np.int64)


def otsu_from_histogram(hist: np.ndarray, vmax: float, vmin: float = 0.0) -> float:
    if hist.sum() == 0:
        raise InputError("nuclear stain is empty: no pixels to threshold")
    centers = vmin + (np.arange(len(hist)) + 0.5) * ((vmax - vmin) / len(hist))
    if np.count_nonzero(hist) < 2:
        raise InputError(
            "nuclear stain has a single intensity everywhere; cannot find nuclei "
            "(set nuclei.classical.threshold or use nuclei.backend=vendor)"
        )
    return float(threshold_otsu(hist=(hist, centers)))


def percentiles_from_histogram(hist: np.ndarray, vmax: float, q) -> tuple[float, float]:
    """The stain values at percentiles ``q`` (lo, hi) of a histogram on [0, vmax] (bin centres);
    hi is kept above lo so a flat stain still rescales.
    """
    if hist.sum() == 0:
        raise InputError("nuclear stain is empty: no pixels to normalise")
    cdf = np.cumsum(hist) / hist.sum()
    width = vmax / len(hist)
    lo, hi = ((np.searchsorted(cdf, np.asarray(q) / 100.0) + 0.5) * width).tolist()
    return float(lo), float(max(hi, lo + width))


def _core_max(backend: ClassicalNuclei, tile) -> float:
    """Largest stain value in a tile's core (the histogram's range for a float image)."""
    rows, cols = tile.core_slices
    return float(np.nanmax(backend.chip.read_image(rows, cols, backend.config.nuclei.channel)))


def _core_raw_histogram(backend: ClassicalNuclei, vmax: float, tile) -> np.ndarray:
    """Histogram of the raw stain over a tile's core (for the normalisation's percentiles)."""
    rows, cols = tile.core_slices
    image = backend.chip.read_image(rows, cols, backend.config.nuclei.channel)
    return tile_histogram(image, vmax, bins=N_RAW_BINS)


def _core_histogram(backend: ClassicalNuclei, state: dict, grid: tuple, tile) -> np.ndarray:
    """Histogram of what Otsu splits over a tile's core, enhanced on its window
    (as segment does).
    """
    backend = copy.copy(backend)
    backend.load(state)
    rows, cols = tile.window_slices
    image = backend.chip.read_image(rows, cols, backend.config.nuclei.channel)
    c = backend.config.nuclei.classical
    core = enhance(backend._normalised(image), c, backend.chip.pixel_size_um)[tile.core_in_window]
    return tile_histogram(foreground_value(core, c.foreground), grid[1], grid[0])


def _core_diameters(backend: ClassicalNuclei, state: dict, tile) -> np.ndarray:
    """Equivalent diameters (px) of a first pass's nuclei whose centroid lies in the tile's core."""
    backend = copy.copy(backend)
    backend.load(state)
    rows, cols = tile.window_slices
    labels = backend.segment_array(
        backend.chip.read_image(rows, cols, backend.config.nuclei.channel), oversize=False
    )
    area = np.bincount(labels.ravel())
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    if not len(ids):
        return np.zeros(0)
    centre = np.array(ndi.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in tile.core_in_window]
    inside = (centre[:, 0] >= r0) & (centre[:, 0] < r1) & (centre[:, 1] >= c0) & (centre[:, 1] < c1)
    return 2.0 * np.sqrt(area[ids[inside]] / np.pi)


def _core_training_samples(backend: ClassicalNuclei, state: dict, tile):
    """The pixel classifier's training samples in a tile's core, on the chip-wide lattice: chip
    flat index, features, pseudo-label class (:mod:`.pixel_classifier`), from a first pass.
    """
    backend = copy.copy(backend)
    backend.load(state)
    rows, cols = tile.window_slices
    image = backend.chip.read_image(rows, cols, backend.config.nuclei.channel)
    c = backend.config.nuclei.classical
    x = backend._normalised(image)
    d = backend.diameter_px or backend._px(backend.config.nuclei.diameter_um)
    foreground = enhance(x, c, backend.chip.pixel_size_um) > backend.threshold
    classes = pc.pseudo_labels(backend.segment_array(image), foreground, d)
    r0, c0 = (s.start for s in tile.core_in_window)
    core = classes[tile.core_in_window]
    gr, gc = (s.start for s in tile.core_slices)
    lr, lc = pc.lattice(core.shape, (gr, gc))
    sub = core[np.ix_(lr, lc)]
    keep = sub != pc.UNLABELLED
    ii, jj = np.nonzero(keep)
    features = pc.pixel_features(x, d)[r0 + lr[ii], c0 + lc[jj]]
    flat = (gr + lr[ii]).astype(np.int64) * 2**31 + (gc + lc[jj])  # chip raster order
    return flat, features, sub[keep]


class ClassicalNuclei(NucleiBackend):
    name = "classical"
    config_type = ClassicalNucleiConfig
    threshold: float | None = None
    lo: float = 0.0
    hi: float = 1.0
    diameter_px: float | None = None  # learned in prepare; None: nuclei.diameter_um
    classifier = None  # the pixel classifier fitted in prepare (pixel_classifier); None: off

    def _px(self, um: float) -> float:
        return um / self.chip.pixel_size_um

    def _normalised(self, image: np.ndarray) -> np.ndarray:
        if self.config.nuclei.classical.normalise:
            return normalise(image, self.lo, self.hi)
        return image

    def _max_diameter_px(self) -> float:
        """The largest diameter a run may use (the learned one is capped here): the halo's basis."""
        d = self._px(self.config.nuclei.diameter_um)
        return d * SIZE_RANGE[1] if self.config.nuclei.classical.learn_size else d

    def _split_params(self, d: float | None = None) -> dict:
        """Sizes of the split (see :mod:`.split`), from the nucleus diameter ``d`` (px; the learned
        one, else the nominal): a nucleus extends at most one diameter from its seed; holes up to
        half a diameter are filled. ``shape`` seeds keep the distance clamped at one diameter and
        seeds max(footprint_um / 2, min_distance_um) apart; ``shape_intensity`` clamps it at the
        radius and puts seeds ``seed_radius`` diameters apart.
        """
        c = self.config.nuclei.classical
        if d is None:
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
        extent = max(2, int(round(d)))
        if c.seeds == "shape":
            radius = max(
                1,
                int(round(self._px(c.footprint_um))) // 2,
                int(round(self._px(c.min_distance_um))),
            )
            dmax = float(extent)
        else:
            radius = max(1, int(round(c.seed_radius * d)))
            dmax = max(1.0, d / 2)
        extra = {}
        if c.seeds == "shape_intensity" and c.seed_dynamic:
            extra = {
                "dynamic": c.seed_dynamic * c.intensity_weight,
                "dynamic_radius_px": max(1, int(round(d / 2))),
            }
        return {
            **extra,
            "hole_px": max(1, int(round(d / 2))),
            "dmax_px": dmax,
            "radius_px": radius,
            "extent_px": extent,
        }

    def context_px(self) -> int:
        """Halo that makes the owned nuclei exact: a nucleus lies within 2 extents of its centroid,
        and a pixel's label depends on the image within the split's reach plus the filters' (the
        seed surface's smoothing too), at the largest diameter the run may learn.
        """
        c = self.config.nuclei.classical
        d = self._max_diameter_px()
        enhance_px = int(4 * self._px(c.sigma_um) + 0.5)
        if c.background_um:
            enhance_px += (int(round(self._px(c.background_um))) | 1) - 1
        if c.seeds == "shape_intensity":
            enhance_px = max(enhance_px, int(4 * c.seed_sigma * d + 0.5))
        if c.shape_mask == "local":
            enhance_px = max(enhance_px, int(4 * c.shape_background * d + 0.5))
        if c.oversize_split:
            enhance_px = max(enhance_px, int(4 * OVERSIZE_SIGMA * d + 0.5))
        if c.shape_valley:
            enhance_px = max(enhance_px, int(4 * c.valley_sigma * d + 0.5) + 1)
        if c.pixel_classifier:
            enhance_px = max(
                enhance_px, pc.feature_reach_px(d) + int(4 * c.classifier_sigma * d + 0.5)
            )
        p = self._split_params(d)
        return 2 * p["extent_px"] + reach_px(**p) + enhance_px + 1

    def prepare(self, ctx):
        """Chip-wide state, each from every tile's core: the stain's percentiles (``normalise``),
        the threshold (``nuclei.classical.threshold``, else Otsu over one summed histogram), and
        the nucleus diameter (``learn_size``: the median of a first pass's nuclei).
        """
        c = self.config.nuclei.classical
        tiles = [t.index for t in ctx.grid]
        dtype = np.dtype(self.chip._image_array().dtype)
        if dtype.kind in "ui":
            vmax = float(np.iinfo(dtype).max)
        else:
            vmax = max([0.0, *ctx.map_tiles(partial(_core_max, self), tiles, desc="histogram")])
            vmax = vmax if math.isfinite(vmax) and vmax > 0 else 1.0
        state = {"lo": 0.0, "hi": 1.0, "diameter_px": None}
        if c.normalise:
            raw = np.sum(
                ctx.map_tiles(partial(_core_raw_histogram, self, vmax), tiles, desc="percentiles"),
                axis=0,
            )
            state["lo"], state["hi"] = percentiles_from_histogram(
                raw, vmax, c.normalise_percentiles
            )
        if c.threshold is not None:
            state["threshold"] = float(c.threshold)
        else:
            top = (vmax - state["lo"]) / (state["hi"] - state["lo"])
            bottom = min(0.0, -state["lo"] / (state["hi"] - state["lo"]))
            grid = (
                float(foreground_value(np.float32(bottom), c.foreground)),
                float(foreground_value(np.float32(top), c.foreground)),
            )
            if c.foreground == "otsu" and not c.normalise:
                grid = (0.0, vmax)  # the previous backend's grid
            total = np.sum(
                ctx.map_tiles(partial(_core_histogram, self, state, grid), tiles, desc="histogram"),
                axis=0,
            )
            t = otsu_from_histogram(total, grid[1], grid[0])
            state["threshold"] = float(np.exp(t) - LOG_OFFSET) if c.foreground == "log_otsu" else t
        if c.learn_size:
            d = np.concatenate(
                ctx.map_tiles(partial(_core_diameters, self, state), tiles, desc="nucleus size")
            )
            nominal = self._px(self.config.nuclei.diameter_um)
            learned = float(np.median(d)) if len(d) else nominal
            state["diameter_px"] = float(np.clip(learned, *(np.array(SIZE_RANGE) * nominal)))
        if c.pixel_classifier:
            parts = ctx.map_tiles(
                partial(_core_training_samples, self, state), tiles, desc="pixel classifier"
            )
            flat, features, classes = (np.concatenate(p) for p in zip(*parts, strict=True))
            features, classes = pc.training_set(flat, features, classes)
            state["classifier_features"], state["classifier_classes"] = features, classes
            state["classifier_interior_px"] = int((classes == pc.INTERIOR).sum())
            state["classifier_other_px"] = int((classes == pc.OTHER).sum())
        return state

    def describe_state(self, state) -> dict:
        return {k: v for k, v in (state or {}).items() if isinstance(v, (int, float, type(None)))}

    def load(self, state):
        self.threshold = state.get("threshold")
        self.lo, self.hi = state.get("lo", 0.0), state.get("hi", 1.0)
        self.diameter_px = state.get("diameter_px")
        features = state.get("classifier_features")
        self.classifier = (
            None if features is None else pc.fit(features, state["classifier_classes"])
        )

    def segment_array(self, image: np.ndarray, oversize: bool = True) -> np.ndarray:
        """Nucleus labels of a stain window. ``oversize=False`` skips the oversize split
        (the first pass that the nucleus size is learned from).
        """
        c = self.config.nuclei.classical
        x = self._normalised(image)
        mask = enhance(x, c, self.chip.pixel_size_um) > self.threshold
        p = self._split_params()
        extra = {}
        if c.seeds == "shape_intensity":
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
            extra["surface"] = c.intensity_weight * smooth(x, c.seed_sigma * d)
        if c.pixel_classifier and self.classifier is not None:
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
            interior = pc.interior_probability(self.classifier, x, mask, d)
            extra["surface"] = extra["surface"] + c.classifier_weight * smooth(
                interior, c.classifier_sigma * d
            )
        if c.peak_fraction is not None:
            extra["keep"] = smooth(x, self._px(c.sigma_um))
            extra["peak_fraction"] = c.peak_fraction
        if c.shape_mask == "local":
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
            extra["shape"] = local_contrast(x, c.shape_sigma * d, c.shape_background * d)
        if c.shape_valley:
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
            not_valley = valley_strength(x, c.valley_sigma * d) <= c.shape_valley
            extra["shape"] = not_valley & extra.get("shape", True)
        labels = split_nuclei(mask, **p, **extra)
        min_area = max(1, int(round(c.min_area_um2 / self.chip.pixel_size_um**2)))
        small = np.bincount(labels.ravel()) < min_area  # whole nuclei: exact wherever they are
        small[0] = False
        labels[small[labels]] = 0
        if c.oversize_split and oversize:
            d = self.diameter_px or self._px(self.config.nuclei.diameter_um)
            stain = smooth(x, OVERSIZE_SIGMA * d)
            labels = split_oversize(labels, stain, d, c.oversize_area, c.oversize_dip)
        return labels

    def segment(self, tile):
        rows, cols = tile.window_slices
        image = self.chip.read_image(rows, cols, self.config.nuclei.channel)
        return self.segment_array(image)

"""``method: genesegnet``: a U-Net over the stain and an RNA location map (Wang et al., 2023).

The network predicts where cells are and, per bin, the offset to its nucleus centre; each
confident bin joins the nucleus its offset lands on, so cells carry the global nucleus IDs and
tiles stitch without seams. Training labels start from expanded nuclei and are refined
recursively (see :mod:`.training`). The bin grid (a whole factor of pixels per bin), patch
sampling, ownership and the torch lifecycle come from the shared toolkit (``methods/common``).
"""

from __future__ import annotations

import logging

import numpy as np
from skimage.segmentation import expand_labels

from ...errors import ConfigError, InputError
from ..base import PrepareContext, TileData, TileResult
from ..common.bins import BinGrid
from ..common.ownership import owned_nuclei
from ..common.patches import cut_patch, patch_box, sample_nuclei
from ..common.torch_model import TorchMethod
from .config import GeneSegNetConfig
from .features import (
    bin_factor,
    histogram_percentile,
    normalise_inputs,
    nucleus_centres,
    rna_map,
    rna_mean,
    stain_histogram,
)
from .inference import assign_cells, assign_to_centres, sliding_predict, torch_predictor
from .training import Geometry, Parts, Patch, load_model, train_genesegnet

log = logging.getLogger(__name__)

#: U-Net poolings: window sides must be multiples of 2**DEPTH.
DEPTH = 3
#: Chip-wide stain percentiles mapped to 0 and 1.
STAIN_PERCENTILES = (1.0, 99.5)


class GeneSegNetMethod(TorchMethod):
    name = "genesegnet"
    config_type = GeneSegNetConfig
    load_model = staticmethod(load_model)

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        size = self.cfg.patch_px
        if size < 16 or size % 2**DEPTH:  # the U-Net's shape (its ranges: config)
            raise ConfigError(
                f"cells.genesegnet.patch_px must be a multiple of {2**DEPTH} and at least 16, got "
                f"{size}"
            )

    # -- geometry -----------------------------------------------------------------------------
    def reach_um(self) -> float:
        """The cell reach, or more: a core bin's windows and their RNA kernels must fit the halo.

        The driver's halo is 2 reach + 2 nucleus diameters; a core bin's output depends on
        windows up to ``patch_px`` bins away and on transcripts 4 sigma beyond them (10% spare
        for bins rounded to whole pixels).
        """
        c = self.cfg
        need = 1.1 * (c.patch_px * c.bin_um + 4 * c.rna_sigma_um + 2 * c.bin_um)
        if Parts.of(
            c
        ).centre:  # a core bin's cell also depends on the centre map around its nucleus
            need += 1.1 * (
                self.config.cells.cell_diameter_um
                + 3 * self.config.nuclei.diameter_um
                + 2 * c.bin_um
            )
        return max(self.config.cells.cell_diameter_um, need / 2 - self.config.nuclei.diameter_um)

    def _geometry(self, bin_um: float) -> Geometry:
        reach = self.config.cells.cell_diameter_um / bin_um
        tolerance = max(1.0, self.config.nuclei.diameter_um / bin_um)
        return Geometry(
            offset_scale=reach,
            reach=reach,
            tolerance=tolerance,
            centre_sigma=self.cfg.centre_sigma_um / bin_um,
        )

    def _inputs(
        self, data: TileData, grid: BinGrid, sigma_bins: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw block-mean stain and RNA location map over the window's bins."""
        channel = self.config.nuclei.channel
        if data.image.shape[0] > channel:
            stain = grid.block_mean(data.image[channel])
        else:
            stain = np.zeros(grid.shape, np.float32)
        tx = data.transcripts
        rows, cols = grid.window_bins(tx.row, tx.col)
        return stain, rna_map(rows, cols, grid.shape, sigma_bins)

    # -- training -----------------------------------------------------------------------------
    def prepare(self, ctx: PrepareContext):
        if ctx.n_nuclei == 0:
            raise InputError(
                f"{ctx.chip.url}: GeneSegNet trains on the chip's nuclei, and none were found"
            )
        c = self.cfg
        chosen = sample_nuclei(c.seed, ctx.n_nuclei, c.n_train_patches)
        factor = bin_factor(ctx.chip.pixel_size_um, c.bin_um)
        bin_um = factor * ctx.chip.pixel_size_um
        sigma = c.rna_sigma_um / bin_um
        expand = c.init_expand_um / bin_um
        far = max(expand, self.config.cells.cell_diameter_um / 2 / bin_um)
        geometry = self._geometry(bin_um)
        channel = self.config.nuclei.channel
        inputs = self._inputs

        def sample(data: TileData):
            grid = BinGrid.for_window(data.tile.window, factor=factor)
            core = data.tile.core_in_window
            hist = (
                stain_histogram(data.image[channel][core])
                if data.image.shape[0] > channel
                else None
            )
            stain, rna = inputs(data, grid, sigma)
            patches = _patches_for(
                data, grid, chosen, stain, rna, c.patch_px, (expand, far), geometry.reach
            )
            return patches, hist, int(data.transcripts.in_core.sum())

        results = ctx.map_tiles(sample, [t.index for t in ctx.grid])
        patches = [p for ps, _, _ in results for p in ps]
        hists = [h for _, h, _ in results if h is not None]
        hist = np.sum(hists, axis=0) if hists else np.zeros(1, np.int64)
        h, w = ctx.chip.shape_yx
        n_bins = -(-h // factor) * -(-w // factor)
        norm = {
            "stain_lo": histogram_percentile(hist, STAIN_PERCENTILES[0]),
            "stain_hi": histogram_percentile(hist, STAIN_PERCENTILES[1]),
            "rna_mean": rna_mean(sum(k for _, _, k in results), n_bins, sigma),
        }
        if Parts.of(c).rna_clip:
            norm["rna_clip"] = Parts.of(c).rna_clip
        train = ctx.train_where_gpu(train_genesegnet)
        state = train(patches, norm, c, geometry)
        for r in state["history"]:
            log.info(
                "GeneSegNet round %d: loss %.4f, mean cell IoU with its training labels %.3f",
                r["round"],
                r["loss"],
                r["iou_with_previous"],
            )
        return {"train": state, "norm": norm, "factor": factor, "bin_um": bin_um}

    # -- inference ----------------------------------------------------------------------------
    def segment(self, data: TileData) -> TileResult:
        st = self.state
        grid = BinGrid.for_window(data.tile.window, factor=st["factor"])
        stain, rna = self._inputs(data, grid, self.cfg.rna_sigma_um / st["bin_um"])
        x = normalise_inputs(stain, rna, st["norm"])
        geometry = self._geometry(st["bin_um"])
        parts = Parts.of(self.cfg)
        m = parts.n_maps
        out = sliding_predict(
            torch_predictor(self.model, self.device, geometry.offset_scale, m),
            x,
            grid.origin,
            self.cfg.patch_px,
            batch=self.cfg.batch_size,
        )
        ids, centroids = nucleus_centres(grid, data.nuclei)
        if parts.centre:
            labels = assign_to_centres(
                out[0],
                out[1],
                out[2:],
                ids,
                centroids,
                self.cfg.prob_threshold,
                geometry.reach,
                geometry.tolerance,
                parts.centre_threshold,
                parts.centre_fallback,
            )
        else:
            labels = assign_cells(
                out[0],
                out[1:],
                ids,
                centroids,
                self.cfg.prob_threshold,
                geometry.reach,
                geometry.tolerance,
            )
        cells = grid.to_pixels(labels, data.shape)
        return TileResult.from_labels(
            np.where(data.nuclei > 0, data.nuclei, cells).astype(np.uint32)
        )


def _patches_for(
    data: TileData,
    grid: BinGrid,
    chosen: np.ndarray,
    stain: np.ndarray,
    rna: np.ndarray,
    size: int,
    expand_bins: tuple[float, float],
    reach_bins: float,
) -> list[Patch]:
    """Patches centred on the chosen nuclei this tile owns, cut from the window's bins."""
    own = np.intersect1d(owned_nuclei(data.nuclei, data.tile)[0], chosen)
    if not len(own):
        return []
    ids, cent = nucleus_centres(grid, data.nuclei)
    nuc = grid.sample(data.nuclei).astype(np.int64)
    arrays = [stain, rna, nuc, *(expand_labels(nuc, distance=d) for d in expand_bins)]
    out = []
    for cid in own:
        cy, cx = cent[np.searchsorted(ids, cid)]
        box = patch_box(int(cy), int(cx), size, grid.shape)
        r0, c0 = box[0], box[2]
        near = (
            (cent[:, 0] > r0 - reach_bins)
            & (cent[:, 0] < r0 + size + reach_bins)
            & (cent[:, 1] > c0 - reach_bins)
            & (cent[:, 1] < c0 + size + reach_bins)
        )
        out.append(
            Patch(
                int(cid),
                *(cut_patch(a, box, size) for a in arrays),
                ids[near],
                cent[near] - np.array([r0, c0], np.float64),
            )
        )
    return out

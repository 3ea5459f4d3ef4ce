"""``method: sslcst``: cells from per-spot in/out and direction predictions (Huo et al., 2026).

Spots, their ownership and the torch lifecycle come from the shared toolkit (``methods/common``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage as ndi

from ...errors import InputError
from ..base import PrepareContext, TileData, TileResult
from ..common.bins import bin_size_um
from ..common.torch_model import TorchMethod
from .config import SSLCSTConfig
from .features import (
    centre_map,
    direction_class,
    direction_mask,
    gather_tokens,
    spot_grid,
    spot_hash,
    spot_labels,
    unit_steps,
)
from .tracking import track
from .training import TrainingSpots, load_model, predict_spots, train_sslcst

log = logging.getLogger(__name__)

DEFAULT_FILL_UM = (
    4.0  # stseg: cell F1 0.366 -> 0.595 on large cells, unchanged on every other chip and crop
)


class SSLCSTMethod(TorchMethod):
    name = "sslcst"
    config_type = SSLCSTConfig
    uses_image = False
    load_model = staticmethod(load_model)

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        self.bin_um = bin_size_um(self.facts, self.cfg.bin_um)
        self.k = self.cfg.neighbourhood
        self.paper = self.cfg.variant == "paper"
        default = paper_max_steps if self.paper else default_max_steps
        self.max_steps = self.cfg.max_steps or default(config, self.bin_um)
        fill_um = (
            self.cfg.fill_um
            if self.cfg.fill_um is not None
            else (0.0 if self.paper else DEFAULT_FILL_UM)
        )
        self.fill_bins = int(math.ceil(fill_um / self.bin_um))

    # -- geometry -----------------------------------------------------------------------------
    def reach_um(self) -> float:
        """Tracking reach (plus a spot of rounding), the neighbourhood read around it, and with
        ``fill_um`` the spots tracked beyond the core for the closing.

        The prior is cut off at the feature reach, so the driver's halo (2 x reach + 2 nucleus
        diameters) holds whole every nucleus whose centroid a kept feature can see.
        """
        return (
            self._feature_reach_um() + 2 * self.fill_bins * self.bin_um
        )  # fill_um: spots tracked beyond the core

    def _feature_reach_um(self) -> float:
        """Where the prior is cut off: tracking reach and the neighbourhood (not fill_um, which
        must not change what the network sees).
        """
        track_um = (
            self.max_steps + (3 if self.paper else 2)
        ) * self.bin_um  # paper: + the smoothing's spot
        return max(track_um + (self.k // 2) * math.sqrt(2) * self.bin_um, self.cfg.neg_distance_um)

    def _grid(self, data: TileData, top_genes: np.ndarray):
        return spot_grid(data, self.bin_um, top_genes, self.cfg.d0_um, self._feature_reach_um())

    # -- training -----------------------------------------------------------------------------
    def prepare(self, ctx: PrepareContext):
        if ctx.n_nuclei == 0:
            raise InputError(
                f"{ctx.chip.url}: SSL-CST learns from the chip's nuclei, and none were found"
            )
        cfg, k = self.cfg, self.k
        n_genes = len(ctx.genes)

        def labels(grid):
            return spot_labels(
                grid,
                self.bin_um,
                k,
                cfg.erosion_bins,
                cfg.neg_distance_um,
                cfg.n_directions,
                need_expression=self.paper,
                floor=self.paper,
            )

        def count(data: TileData):
            own = data.transcripts.in_core
            genes = np.bincount(data.transcripts.gene[own].astype(np.int64), minlength=n_genes)
            grid = self._grid(data, np.zeros(0, np.int64))
            inout, _ = labels(grid)
            mine = grid.binned.grid.owned(data.tile)
            return genes, int(((inout == 1) & mine).sum()), int(((inout == 0) & mine).sum())

        tiles = [t.index for t in ctx.grid]
        counted = ctx.map_tiles(count, tiles)
        gene_counts = np.sum([g for g, _, _ in counted], axis=0)
        n_pos, n_neg = sum(p for _, p, _ in counted), sum(n for _, _, n in counted)
        if n_pos == 0:
            raise InputError(
                f"{ctx.chip.url}: no spot lies {cfg.erosion_bins} spot(s) inside a nucleus "
                f"(cells.sslcst.erosion_bins={cfg.erosion_bins}); lower it or the bin size"
            )
        if n_neg == 0:
            raise InputError(
                f"{ctx.chip.url}: no empty spot lies farther than "
                f"cells.sslcst.neg_distance_um={cfg.neg_distance_um} from every nucleus, so "
                "there are no negatives to learn from; lower it"
            )
        top = np.argsort(-gene_counts, kind="stable")[: min(cfg.n_genes, n_genes)]
        if self.paper and not cfg.top_genes_only:
            top = np.arange(n_genes)  # the paper reads every gene
        want_neg = min(n_neg, cfg.n_train_spots // 2)
        want_pos = min(n_pos, cfg.n_train_spots - want_neg)
        rate = {1: want_pos / n_pos, 0: want_neg / n_neg}

        def sample(data: TileData):
            grid = self._grid(data, top)
            inout, direction = labels(grid)
            b = grid.binned
            r, c = np.nonzero((inout != -100) & b.grid.owned(data.tile))
            gr, gc = r + b.origin[0], c + b.origin[1]
            y = inout[r, c]
            keep = spot_hash(cfg.seed, gr, gc) < np.where(y == 1, rate[1], rate[0])
            r, c, gr, gc, y = r[keep], c[keep], gr[keep], gc[keep], y[keep]
            counts, prior = gather_tokens(grid, r, c, k)
            return TrainingSpots(
                (gr << 32) + gc,
                np.minimum(counts, 65535).astype(np.uint16),
                prior,
                y,
                direction[r, c],
            )

        spots = TrainingSpots.concat(ctx.map_tiles(sample, tiles))
        train = ctx.train_where_gpu(train_sslcst)
        state = train(spots, k, len(top) + 1, cfg, log=log.info)
        return {"train": state, "top_genes": top, "bin_um": self.bin_um}

    # -- inference ----------------------------------------------------------------------------
    def _spots(self, data: TileData, margin: int):
        """The window's spot grid, the spots whose paths are followed (the core's, and with
        ``fill_um`` those within twice its radius, which a closing of the core reads), and the
        spots within ``margin`` of the core; no masks where the window holds no nucleus (then
        every spot keeps its nucleus label).
        """
        grid = self._grid(data, self.state["top_genes"])
        h, w = grid.shape
        if not (grid.binned.nuclei > 0).any() or not h or not w:
            return grid, None, None
        r0, r1, c0, c1 = grid.binned.grid.core_box(data.tile)

        def grown(pad: int) -> np.ndarray:
            out = np.zeros((h, w), bool)
            out[max(0, r0 - pad) : r1 + pad, max(0, c0 - pad) : c1 + pad] = True
            return out

        return grid, grown(2 * self.fill_bins), grown(margin)

    def segment(self, data: TileData) -> TileResult:
        return TileResult.from_labels(self._cell_labels(data))

    def _cell_labels(self, data: TileData) -> np.ndarray:
        if self.paper:
            return self._segment_paper(data)
        # Paths from core spots stay within max_steps (+ rounding) of the core; spots farther
        # than that from every nucleus can never reach one, so they need no prediction.
        m = self.max_steps + 1
        grid, tracked, region = self._spots(data, m + 2 * self.fill_bins)
        if tracked is None:
            return grid.binned.to_pixels(grid.binned.nuclei, data.shape).astype(np.uint32)
        b, (h, w) = grid.binned, grid.shape
        cells = b.nuclei.copy()
        near = ndi.distance_transform_edt(b.nuclei == 0) <= m
        alive = region & near & (b.nuclei == 0)
        rr, cc = np.nonzero(alive)
        p_in, dirs = predict_spots(self.model, self.device, grid, rr, cc, self.k)
        direction = np.zeros((h, w), np.int64)
        direction[rr, cc] = dirs
        start = (p_in >= self.cfg.in_threshold) & tracked[rr, cc]
        ids = track(
            rr[start],
            cc[start],
            direction,
            alive,
            b.nuclei,
            unit_steps(self.cfg.n_directions),
            self.max_steps,
        )
        cells[rr[start], cc[start]] = ids
        return b.to_pixels(self._fill(cells, b), data.shape).astype(np.uint32)

    def _fill(self, cells: np.ndarray, b) -> np.ndarray:
        """``fill_um``: each cell closed over a disc of that radius, claiming only empty,
        unlabelled spots.
        """
        if not self.fill_bins:
            return cells
        return close_cells(cells, b.counts() == 0, self.fill_bins)

    def _segment_paper(self, data: TileData) -> np.ndarray:
        """The paper's inference: in/out and direction probabilities for every spot within reach of
        a nucleus (nucleus spots too), the direction prior (classes with no nucleus within reach
        zeroed, the rest renormalised), the expected direction averaged over each spot and its 8
        neighbours, floor-binned, then paths from in-cell spots tracked to a nucleus centre.
        """
        cfg = self.cfg
        # Paths from core spots stay within max_steps (+ rounding) of the core and read a
        # direction smoothed over one more spot: predictions are needed up to max_steps + 2.
        grid, tracked, region = self._spots(data, self.max_steps + 2 + 2 * self.fill_bins)
        if tracked is None:
            return grid.binned.to_pixels(grid.binned.nuclei, data.shape).astype(np.uint32)
        b, (h, w) = grid.binned, grid.shape
        cells = b.nuclei.copy()
        reach = self.max_steps * self.bin_um
        near = (
            ndi.distance_transform_edt(b.nuclei == 0, sampling=self.bin_um) <= reach + self.bin_um
        )
        rr, cc = np.nonzero(region & near)
        chunk = max(256, 8192 * 33 // (len(self.state["top_genes"]) + 1))
        p_in, probs = predict_spots(
            self.model, self.device, grid, rr, cc, self.k, chunk=chunk, probs=True
        )
        probs = probs.astype(np.float64)
        probs *= direction_mask(grid, rr, cc, self.bin_um, reach, cfg.n_directions, floor=True)
        total = probs.sum(1)
        ok = total > 0  # no nucleus within reach in any direction: the spot reaches none
        probs[ok] /= total[ok, None]
        steps = unit_steps(cfg.n_directions, centre=cfg.step_at_bin_centre)
        field = np.zeros((h, w, 2))
        field[rr[ok], cc[ok]] = probs[ok] @ unit_steps(cfg.n_directions, centre=True)
        field = sum(
            np.roll(np.roll(np.pad(field, ((1, 1), (1, 1), (0, 0))), dy, 0), dx, 1)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )[1:-1, 1:-1]
        alive = np.zeros((h, w), bool)
        alive[rr[ok], cc[ok]] = True
        alive &= np.hypot(field[..., 0], field[..., 1]) > 1e-9
        direction = direction_class(field[..., 0], field[..., 1], cfg.n_directions, floor=True)
        start = (
            (p_in >= cfg.in_threshold) & tracked[rr, cc] & (b.nuclei[rr, cc] == 0) & alive[rr, cc]
        )
        centres = centre_map(grid, self.bin_um, cfg.centre_radius_um or 1.5 * self.bin_um)
        ids = track(rr[start], cc[start], direction, alive, centres, steps, self.max_steps)
        cells[rr[start], cc[start]] = ids
        return b.to_pixels(self._fill(cells, b), data.shape).astype(np.uint32)


def paper_max_steps(config, bin_um: float) -> int:
    """The paper tracks to the nucleus centre with no stated budget; paths are capped (a bounded
    halo keeps tiles exact) at a cell radius plus 4 µm for bends.
    """
    return max(1, int(math.ceil((config.cells.cell_diameter_um / 2 + 4.0) / bin_um)))


def default_max_steps(config, bin_um: float) -> int:
    """Steps for a spot at a cell's far edge to reach its nucleus's edge, (cell - nucleus) / 2,
    plus 2 µm because paths bend and nuclei sit off-centre. Longer budgets let cells spill into
    their neighbours (measured on generated chips: F1 falls from 0.81 at 5-6 µm to 0.70 at 15 µm).
    """
    gap = max(0.0, config.cells.cell_diameter_um - config.nuclei.diameter_um) / 2
    return max(1, int(math.ceil((gap + 2.0) / bin_um)))


def close_cells(cells: np.ndarray, free: np.ndarray, radius: int) -> np.ndarray:
    """Each cell's mask closed by a disc of ``radius`` spots; a closed spot joins it only where
    ``free`` (and unlabelled); where two cells close over one spot the lower ID takes it.
    """
    out = cells.copy()
    ids = np.unique(cells)
    ids = ids[ids > 0]
    if not len(ids):
        return out
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = yy**2 + xx**2 <= radius**2
    lab = np.searchsorted(ids, cells) + 1
    lab[cells == 0] = 0
    h, w = cells.shape
    pad = 2 * radius
    for k, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        r0, r1 = max(0, sl[0].start - pad), min(h, sl[0].stop + pad)
        c0, c1 = max(0, sl[1].start - pad), min(w, sl[1].stop + pad)
        mine = np.pad(lab[r0:r1, c0:c1] == k + 1, radius)  # zeros beyond the window: no edge effect
        closed = ndi.binary_closing(mine, disc)[radius:-radius, radius:-radius]
        region = out[r0:r1, c0:c1]
        region[closed & free[r0:r1, c0:c1] & (region == 0)] = ids[k]
    return out

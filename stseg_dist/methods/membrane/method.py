"""``method: membrane``: cells segmented on a membrane or cell-wall stain (STCellbin, Zhang et al.,
GigaByte 2024).

The membrane channel is registered to the nuclear stain once per chip (:mod:`.registration`),
then each tile segments cells on it, either with a classical watershed seeded by the nuclei
(``backend: classical``, no weights) or with Cellpose in model actors (``backend: cellpose``,
several diameters per tile, the one with the largest total cell area kept). Either way every cell
carries the global ID of its nucleus, so stitching stays seamless; transcripts then follow the
cell mask. Cells whose nucleus is not seen are not called: the classical flood cannot tell them
from the membrane-enclosed gaps between cells, and Cellpose would have to run twice per tile
(a seeds pass and a cells pass) to give them tiling-independent IDs.
"""

from __future__ import annotations

import logging

import numpy as np
from skimage.filters import threshold_otsu

from ...errors import InputError
from ...imaging.cellpose import load_cellpose, worker_facts
from ...imaging.filters import smooth
from ..base import CellMethod, PrepareContext, Resources, TileData, TileResult
from ..common.ownership import tile_owning
from .config import MembraneConfig
from .registration import apply_offset, downsample, estimate_offset, sample_regions
from .segment import best_diameter, classical_cells, to_global_ids, within_reach
from .track_lines import StainReader, prepare_track_lines

log = logging.getLogger(__name__)

BACKENDS = ("classical", "cellpose")
MODEL_KEY = "cells.membrane.cellpose.model"


class MembraneMethod(CellMethod):
    name = "membrane"
    config_type = MembraneConfig

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        c = config.cells.membrane
        self.cfg = c
        self.uses_model = c.backend == "cellpose"  # Cellpose loads its model once per actor
        self.offset = (0, 0)
        self.stain = None  # StainReader when registered by track lines
        self.threshold = c.threshold
        self.model = None

    # -- geometry -----------------------------------------------------------------------------
    def reach_um(self) -> float:
        """Cells stop ``max_distance_um`` from their nucleus; the registered membrane window is
        read up to ``max_shift_um`` further, so the halo covers both. Track lines keep that margin
        too although each tile reads its own stain: their dim lines are corridors along which the
        flood reaches past ``max_distance_um`` of context (with the halo of 2 x max_distance_um,
        35 of 160,000 px changed with the tiling on a 200 µm chip; none with this margin).
        """
        return self.cfg.max_distance_um + (self.cfg.max_shift_um if self.cfg.register else 0.0)

    def shifts_window(self) -> bool:
        """The offset registration shifts the tile's own stain window (so the halo must cover the
        shift); track lines read each tile's stain through the transform instead.
        """
        return self.cfg.register and self.cfg.registration == "offset"

    def compute(self) -> Resources:
        return Resources(actors=1, num_gpus=1.0) if self.uses_model else Resources()

    # -- chip-wide: registration offset and membrane threshold ---------------------------------
    def prepare(self, ctx: PrepareContext):
        c, chip = self.cfg, ctx.chip
        if chip.n_channels <= c.channel:
            raise InputError(
                f"{chip.url}: no membrane stain: cells.membrane.channel is {c.channel} but the "
                "image "
                f"has {chip.n_channels} channel(s)"
            )
        need_threshold = c.backend == "classical" and c.threshold is None
        track = (
            prepare_track_lines(ctx, c) if c.register and c.registration == "track_lines" else {}
        )
        register = self.shifts_window()
        if not register and not need_threshold:
            return {"offset": (0, 0), "threshold": c.threshold, **track}
        f, nuc_ch, mem_ch = c.register_downsample, self.config.nuclei.channel, c.channel
        sigma = c.sigma_um / chip.pixel_size_um
        regions = sample_regions(chip.shape_yx, c.register_patch_px * f, c.register_max_regions)
        owner: dict[int, list[tuple[int, int, int, int]]] = {}
        for reg in regions:  # each region is read by the tile whose core holds its centre
            owner.setdefault(
                tile_owning(ctx.grid, (reg[0] + reg[1]) // 2, (reg[2] + reg[3]) // 2), []
            ).append(reg)

        def sample(data: TileData):
            out = []
            for r0, r1, c0, c1 in owner[data.tile.index]:
                mem = chip.read_image(slice(r0, r1), slice(c0, c1), mem_ch)
                values = (
                    smooth(mem, sigma)[::4, ::4].ravel()
                    if need_threshold
                    else np.zeros(0, np.float32)
                )
                nuc = chip.read_image(slice(r0, r1), slice(c0, c1), nuc_ch) if register else None
                out.append(
                    (
                        downsample(nuc, f) if register else None,
                        downsample(mem, f) if register else None,
                        values,
                    )
                )
            return out

        results = [r for part in ctx.map_tiles(sample, sorted(owner)) for r in part]
        offset = (0, 0)
        if register:
            offset = estimate_offset(
                [r[0] for r in results],
                [r[1] for r in results],
                f,
                c.max_shift_um / chip.pixel_size_um,
                where=chip.url,
                normalization=None if c.register_normalization == "none" else "phase",
            )
            log.info(
                "membrane stain registered to the nuclear stain: offset (dy, dx) = %s px", offset
            )
        threshold = c.threshold
        if need_threshold:
            values = np.concatenate([r[2] for r in results])
            if values.size == 0 or values.min() == values.max():
                raise InputError(
                    f"{chip.url}: membrane channel {c.channel} is empty or flat; cannot threshold "
                    "it "
                    "(set cells.membrane.threshold)"
                )
            threshold = float(threshold_otsu(values))
        return {"offset": tuple(int(v) for v in offset), "threshold": threshold, **track}

    def load(self, state):
        if state is not None:
            self.offset = tuple(state["offset"])
            self.threshold = state["threshold"]
            self.stain = StainReader(state, self.cfg.channel) if "transform" in state else None
        if self.uses_model and self.model is None:
            self._load_model()

    def _load_model(self):
        self.model = load_cellpose(
            self.cfg.cellpose.model, self.cfg.cellpose.storage_options, MODEL_KEY
        )

    def describe(self) -> dict:
        return worker_facts(self.model, MODEL_KEY)

    def describe_state(self, state) -> dict:
        return {"registration": state["registration"]} if state and "registration" in state else {}

    # -- per tile -----------------------------------------------------------------------------
    def membrane(self, data: TileData) -> np.ndarray:
        """The tile's membrane window, shifted onto the nuclear stain's grid (NaN where the shift
        brings in pixels from beyond the window), or read through the track-line transform.
        """
        if data.image.shape[0] <= self.cfg.channel:
            raise InputError(
                f"tile {data.tile.index}: no membrane stain: cells.membrane.channel is "
                f"{self.cfg.channel} but the image has {data.image.shape[0]} channel(s)"
            )
        if self.stain is not None:
            return self.stain.window(data.tile.window, data.storage_options)
        return apply_offset(
            data.image[self.cfg.channel].astype(np.float32), self.offset, fill=np.nan
        )

    def segment(self, data: TileData) -> TileResult:
        return TileResult.from_labels(self._cell_labels(data))

    def _cell_labels(self, data: TileData) -> np.ndarray:
        seeds = data.nuclei
        if data.seeds is not None:
            seeds = np.where(seeds > 0, seeds, data.seeds)
        ps, c = data.pixel_size_um, self.cfg
        if c.backend == "classical":
            if self.threshold is None:
                raise RuntimeError("membrane method used before load(): no threshold")
            return classical_cells(
                self.membrane(data),
                seeds,
                self.threshold,
                c.sigma_um / ps,
                c.max_distance_um / ps,
                c.ridge_um / ps,
            )
        masks, _, _ = self.cellpose_masks(data)
        cells = to_global_ids(masks, seeds)
        return np.where(within_reach(seeds, c.max_distance_um / ps), cells, 0).astype(np.uint32)

    def cellpose_masks(self, data: TileData) -> tuple[np.ndarray, float, list[int]]:
        """Cellpose on (membrane, nucleus) at each diameter; the largest total cell area wins."""
        if self.model is None:
            self._load_model()
        c = self.cfg
        mem = self.membrane(data)
        mem = np.where(np.isnan(mem), np.nanmedian(mem) if not np.isnan(mem).all() else 0.0, mem)
        x = np.stack([mem, data.image[self.config.nuclei.channel].astype(np.float32)], axis=-1)

        def run(diameter_px: float) -> np.ndarray:
            masks, _flows, _styles = self.model.eval(
                x,
                channel_axis=-1,
                diameter=diameter_px,
                batch_size=c.cellpose.batch_size,
                flow_threshold=c.cellpose.flow_threshold,
                cellprob_threshold=c.cellpose.cellprob_threshold,
            )
            return masks

        return best_diameter(run, [d / data.pixel_size_um for d in c.diameters_um])

"""``cells.membrane.variant: paper``: STCellbin (Zhang et al., GigaByte 2024) as published.

Cells are segmented on the membrane / cell-wall stain alone, over overlapping blocks anchored to
the chip (:mod:`.blocks`), with Cellpose at each of ``diameters_um`` (the largest total cell area
wins per block; weights from ``model``) or, with ``backend: classical``, a watershed on the stain
that needs no nuclei (:func:`.paper.watershed_cells`). Nuclei only name cells: a cell holding a
nucleus's centroid takes its global ID, a cell holding none is kept with its own chip-wide ID
(a seed numbered by the driver like a nucleus). No cell is capped at a distance from a nucleus.
Each departure from the paper is a switch: ``backend: classical`` (no weights),
``nucleus_free_min_density``, ``split_by_nuclei``.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import InputError
from ..base import TileData, TileResult
from .blocks import BlockGrid, paint_first, window_cells
from .method import MembraneMethod
from .paper import (
    dense_enough,
    global_labels,
    held_nuclei,
    nucleus_centroids,
    seed_discs,
    watershed_cells,
)
from .segment import best_diameter

SEED_RADIUS_UM = 1.0  # a nucleus-free cell's seed: its pixels this close to its centroid


class PaperMembraneMethod(MembraneMethod):
    """The paper variant; the registry picks it for ``cells.membrane.variant: paper``."""

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        c = self.cfg
        self.overlap_um = (
            c.block_overlap_um if c.block_overlap_um is not None else config.cells.cell_diameter_um
        )
        d = config.cells.cell_diameter_um
        self.max_area_um2 = (
            c.max_cell_area_um2 if c.max_cell_area_um2 is not None else math.pi * d * d
        )
        self.density = 0.0  # chip mean transcripts per µm², from prepare

    def reach_um(self) -> float:
        """Half the context a window needs (the halo is twice the reach): every block holding a core
        pixel seen whole, plus the registration shift and a seed disc.
        """
        shift = self.cfg.max_shift_um if self.shifts_window() else 0.0
        return (self.cfg.block_um + 2 * self.overlap_um) / 2 + shift + SEED_RADIUS_UM

    def blocks(self, pixel_size_um: float, shape: tuple[int, int]) -> BlockGrid:
        return BlockGrid(
            tuple(shape),
            max(8, int(round(self.cfg.block_um / pixel_size_um))),
            int(math.ceil(self.overlap_um / pixel_size_um)),
        )

    # -- chip-wide ------------------------------------------------------------------------------
    def prepare(self, ctx):
        state = dict(super().prepare(ctx))
        chip = ctx.chip
        h, w = chip.shape_yx
        state["density"] = float(chip.transcripts.num_rows) / max(
            h * w * chip.pixel_size_um**2, 1e-12
        )
        state["shape"] = [int(h), int(w)]
        return state

    def load(self, state):
        super().load(state)
        if state is not None:
            self.density = float(state.get("density", 0.0))
            self.chip_shape = tuple(state["shape"])

    # -- per tile -------------------------------------------------------------------------------
    def _cells(self, data: TileData):
        """Kept cells of every block this window can segment whole, in chip-wide order."""
        if data.image.shape[0] <= self.cfg.channel:
            raise InputError(
                f"tile {data.tile.index}: no membrane stain: cells.membrane.channel is "
                f"{self.cfg.channel} but the image has {data.image.shape[0]} channel(s)"
            )
        ps = data.pixel_size_um
        grid = self.blocks(ps, self.chip_shape)
        window = data.tile.window
        dy, dx = self.offset
        h, w = self.chip_shape
        # a block is segmented here only if its registered membrane lies in the window
        # (or off the chip)
        inner = (
            window[0] if window[0] == 0 else window[0] + max(0, -dy),
            window[1] if window[1] == h else window[1] - max(0, dy),
            window[2] if window[2] == 0 else window[2] + max(0, -dx),
            window[3] if window[3] == w else window[3] - max(0, dx),
        )
        mem = self.membrane(
            data
        )  # registered: shifted by the offset, or read through the transform
        nuc = data.image[self.config.nuclei.channel].astype(np.float32)

        def region(ext):
            sl = np.s_[
                ext[0] - window[0] : ext[1] - window[0], ext[2] - window[2] : ext[3] - window[2]
            ]
            return mem[sl], nuc[sl]

        def segment_blocks(blocks):
            exts = [grid.extended(*b) for b in blocks]
            if self.cfg.backend == "classical":
                return [self._watershed(region(e)[0], ps) for e in exts]
            return self._cellpose([region(e) for e in exts], ps)

        return window_cells(inner, grid, segment_blocks), window

    def _watershed(self, membrane: np.ndarray, ps: float) -> np.ndarray:
        c = self.cfg
        if self.threshold is None:
            raise RuntimeError("membrane method used before load(): no threshold")
        masks, _, _ = best_diameter(
            lambda d: watershed_cells(
                membrane,
                self.threshold,
                c.sigma_um / ps,
                d,
                c.ridge_um / ps,
                c.min_cell_area_um2 / ps**2,
                self.max_area_um2 / ps**2,
            ),
            [d / ps for d in c.diameters_um],
        )
        return masks

    def _cellpose(self, regions, ps: float) -> list[np.ndarray]:
        """Cellpose on every block at each diameter, one batched call per diameter; per block the
        diameter with the largest total cell area wins (STCellbin).
        """
        if self.model is None:
            self._load_model()
        c = self.cfg
        images = []
        for mem, nuc in regions:
            fill = np.nanmedian(mem) if not np.isnan(mem).all() else 0.0
            images.append(np.stack([np.where(np.isnan(mem), fill, mem), nuc], axis=-1))
        if not images:
            return []
        per_d = []
        for d in c.diameters_um:
            masks, _flows, _styles = self.model.eval(
                images,
                channel_axis=-1,
                diameter=d / ps,
                batch_size=c.cellpose.batch_size,
                flow_threshold=c.cellpose.flow_threshold,
                cellprob_threshold=c.cellpose.cellprob_threshold,
            )
            per_d.append([np.asarray(m) for m in masks])
        return [
            best_diameter(lambda k, i=i: per_d[k][i], list(range(len(per_d))))[0]
            for i in range(len(images))
        ]

    def _counts(self, data: TileData) -> np.ndarray:
        tx = data.transcripts
        counts = np.zeros(data.shape, np.int32)
        np.add.at(counts, (tx.row, tx.col), 1)
        return counts

    def find_seeds(self, data: TileData) -> np.ndarray | None:
        if not self.cfg.keep_nucleus_free:
            return None
        cells, window = self._cells(data)
        held = held_nuclei(cells, nucleus_centroids(data.nuclei), window)
        keep = np.array([len(h) == 0 for h in held], bool)
        keep &= dense_enough(
            cells,
            self._counts(data),
            window,
            data.pixel_size_um**2,
            self.cfg.nucleus_free_min_density * self.density,
        )
        return seed_discs(cells, keep, window, SEED_RADIUS_UM / data.pixel_size_um)

    def segment(self, data: TileData) -> TileResult:
        return TileResult.from_labels(self._cell_labels(data))

    def _cell_labels(self, data: TileData) -> np.ndarray:
        cells, window = self._cells(data)
        held = held_nuclei(cells, nucleus_centroids(data.nuclei), window)
        own = paint_first(cells, window)
        return global_labels(
            own,
            cells,
            held,
            data.nuclei,
            data.seeds if self.cfg.keep_nucleus_free else None,
            window,
            SEED_RADIUS_UM / data.pixel_size_um,
            self.cfg.split_by_nuclei,
        )

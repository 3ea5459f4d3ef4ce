"""Nucleus expansion, the Xenium Ranger baseline: each pixel within ``distance_um`` of a nucleus
joins the nearest one.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import expand_labels

from ..base import CellMethod, TileData, TileResult
from .config import ExpansionConfig


class ExpansionMethod(CellMethod):
    name = "expansion"
    config_type = ExpansionConfig
    uses_image = False

    def reach_um(self) -> float:
        return self.config.cells.expansion.distance_um

    def segment(self, data: TileData) -> TileResult:
        labels = data.nuclei
        if data.seeds is not None:
            labels = np.where(labels > 0, labels, data.seeds)
        distance_px = self.config.cells.expansion.distance_um / data.pixel_size_um
        return TileResult.from_labels(
            expand_labels(labels, distance=distance_px).astype(np.uint32, copy=False)
        )

"""Cellpose nuclei, run inside a Ray actor that loads the model once.

The model (a cached built-in name, a local path or a URL; never downloaded at run time, read with
``weights_only=True``) is loaded by the Cellpose loader the membrane method shares,
:mod:`stseg_dist.imaging.cellpose`.
"""

from __future__ import annotations

import numpy as np

from ..imaging.cellpose import load_cellpose, worker_facts
from ..lifecycle import Compute
from .base import NucleiBackend

MODEL_KEY = "nuclei.cellpose.model"


class CellposeNuclei(NucleiBackend):
    name = "cellpose"

    def __init__(self, config, chip):
        super().__init__(config, chip)
        self.model = None

    def context_px(self) -> int:
        return int(np.ceil(self.config.nuclei.diameter_um / self.chip.pixel_size_um))

    def compute(self) -> Compute:
        return Compute(actors=1, num_gpus=1.0)  # the model loads once per actor

    def load(self, state=None) -> None:
        cfg = self.config.nuclei.cellpose
        self.model = load_cellpose(cfg.model, cfg.storage_options, MODEL_KEY)

    def describe(self):
        return worker_facts(self.model, MODEL_KEY)

    def segment(self, tile):
        if self.model is None:
            self.load()
        cfg = self.config.nuclei.cellpose
        rows, cols = tile.window_slices
        image = self.chip.read_image(rows, cols, self.config.nuclei.channel).astype(np.float32)
        diameter = cfg.diameter_px or self.config.nuclei.diameter_um / self.chip.pixel_size_um
        masks, _flows, _styles = self.model.eval(
            image,
            diameter=diameter,
            batch_size=cfg.batch_size,
            flow_threshold=cfg.flow_threshold,
            cellprob_threshold=cfg.cellprob_threshold,
        )
        return np.asarray(masks).astype(np.uint32)

"""Nuclei backends: each turns one tile window into nucleus labels (local IDs).

Backends only segment; ownership and global IDs are decided by :mod:`stseg_dist.stitching`, so
every backend gets seamless stitching for free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..io.chip import Chip
    from ..tiling import Tile


class NucleiBackend:
    name: str = ""
    #: True when the backend holds a model and should run in a (GPU) actor, loaded once.
    uses_model: bool = False

    def __init__(self, config: "PipelineConfig", chip: "Chip"):
        self.config = config
        self.chip = chip

    def context_px(self) -> int:
        """Pixels of context an object needs around it to be segmented as in any other window."""
        return 0

    def prepare(self, stats: dict[str, Any]) -> None:
        """Receive chip-wide statistics (e.g. the global threshold) before any tile."""

    def describe(self) -> dict[str, Any]:
        """Worker facts recorded in run.json (e.g. how often a model was loaded)."""
        return {}

    def segment(self, tile: "Tile") -> np.ndarray:
        """Nucleus labels over the tile's window (any positive IDs; 0 = background)."""
        raise NotImplementedError

"""The nuclei-backend interface: the plugin lifecycle of :mod:`stseg_dist.lifecycle`.

``prepare(ctx)`` runs chip-wide work through ``ctx.map_tiles`` (the classical backend's Otsu
threshold over every tile), ``load(state)`` readies a worker (a threshold, a Cellpose model in an
actor), ``segment(tile)`` labels one window. Backends only segment; ownership and global IDs are
decided by :mod:`stseg_dist.stitching`, so every backend gets seamless stitching for free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..lifecycle import Plugin
from ..settings import validate_section

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..io.chip import Chip
    from ..tiling import Tile


class NucleiBackend(Plugin):
    """Base class; a backend's settings (``nuclei.<name>``) are validated here."""

    #: The dataclass of its settings, ``nuclei.<name>`` (declared in :mod:`.config`); None: none.
    config_type: type | None = None

    def __init__(self, config: PipelineConfig, chip: Chip):
        self.config = config
        self.chip = chip
        if self.name:
            validate_section(config, f"nuclei.{self.name}")

    def context_px(self) -> int:
        """Pixels of context an object needs around it to be segmented as in any other window."""
        return 0

    def describe(self) -> dict[str, Any]:
        """Worker facts recorded in run.json (e.g. how often a model was loaded)."""
        return {}

    def segment(self, tile: Tile) -> np.ndarray:
        """Nucleus labels over the tile's window (any positive IDs; 0 = background)."""
        raise NotImplementedError

"""The cell-method interface: what every method (expansion, UCS, ...) plugs into.

A method follows the plugin lifecycle of :mod:`stseg_dist.lifecycle` (``prepare(ctx) -> state``,
``load(state)``, ``segment(tile)``): it sees one tile at a time through
:class:`~stseg_dist.tiledata.TileData` and returns a :class:`~stseg_dist.tiledata.TileResult`:
cell labels over the tile's window, using the *global* nucleus IDs it was given, so cells that
cross tile borders get the same ID from every tile and stitching needs no matching; and, for a
method that assigns transcripts itself, each transcript's cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..io.chip import ChipFacts
from ..lifecycle import Plugin, PrepareContext, Resources
from ..settings import validate_section
from ..tiledata import TileData, TileResult, TileTranscripts

if TYPE_CHECKING:
    from ..config import PipelineConfig


class CellMethod(Plugin):
    """Base class. Subclasses set ``name`` and implement :meth:`segment`.

    A method's settings live in ``cells.<name>``; they are validated here, by the section's own
    rules, so a subclass constructor only derives what it needs from them.
    """

    #: False for methods that never look at the image, so tiles skip reading it.
    uses_image: bool = True
    #: The dataclass of its settings, ``cells.<name>`` (declared beside the method's code and
    #: composed into ``CellsConfig`` by :mod:`stseg_dist.config`); None: no settings of its own.
    config_type: type | None = None

    def __init__(self, config: PipelineConfig, facts: ChipFacts | str | None = None):
        self.config = config
        if isinstance(facts, str):  # a platform's name, as the former API passed it
            facts = ChipFacts.for_platform(facts)
        self.facts = facts if facts is not None else ChipFacts()  # chip.json's, never a platform
        if self.name:
            validate_section(config, f"cells.{self.name}")

    def compute(self) -> Resources:
        """Ray tasks, unless the method declares an actor pool. A plugin written against the
        former API (``uses_model = True`` and ``actor_resources() -> (actors, gpus)``) gets the
        pool it asked for.
        """
        if getattr(self, "uses_model", False):
            actors, gpus = self.actor_resources() if hasattr(self, "actor_resources") else (1, 0.0)
            return Resources(actors=int(actors), num_gpus=float(gpus))
        return Resources()

    def reach_um(self) -> float:
        """How far from a nucleus a cell may extend; the halo must cover it."""
        return self.config.cells.cell_diameter_um

    def find_seeds(self, data: TileData) -> np.ndarray | None:
        """Optional: labels (local IDs) of cells with no nucleus, found in this window.

        The driver owns each seed by its centroid's tile and gives it a global ID, exactly like
        nuclei; the seeds then come back in ``TileData.seeds`` for :meth:`segment`.
        """
        return None

    def segment(self, data: TileData) -> TileResult:
        """Cell labels (global IDs from ``data.nuclei`` / ``data.seeds``) over the window, and
        optionally each transcript's cell: ``TileResult.from_labels(labels)`` for a pixel method,
        ``TileResult(labels, cell_id=...)`` for one that assigns transcripts itself.
        """
        raise NotImplementedError


#: A learned method's cell stage: one actor that loads the weights once, half a GPU where there is
#: one.
MODEL_ACTOR = Resources(actors=1, num_gpus=0.5)

__all__ = [
    "MODEL_ACTOR",
    "CellMethod",
    "Resources",
    "PrepareContext",
    "TileData",
    "TileResult",
    "TileTranscripts",
]

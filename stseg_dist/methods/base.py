"""The cell-method interface: what every method (expansion, UCS, ...) plugs into.

A method sees one tile at a time through :class:`TileData` and returns cell labels over the
tile's window, using the *global* nucleus IDs it was given, so cells that cross tile borders
get the same ID from every tile and stitching needs no matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..tiling import Tile

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..io.chip import Chip
    from ..tiling import TileGrid


@dataclass
class TileTranscripts:
    """Transcripts inside a tile's window, in µm and as window pixel indices."""

    x: np.ndarray  # µm, float64
    y: np.ndarray  # µm, float64
    gene: np.ndarray  # int32 index into TileData.genes
    row: np.ndarray  # int64 pixel row within the window
    col: np.ndarray  # int64 pixel column within the window
    in_core: np.ndarray  # bool: owned by this tile (counted here, exactly once chip-wide)
    row_index: np.ndarray  # int64 global input row
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class TileData:
    """Everything a cell method may look at for one tile (window = core + halo)."""

    tile: Tile
    pixel_size_um: float
    origin_um: tuple[float, float]
    platform: str
    image: np.ndarray  # (C, h, w) window of every image channel
    nuclei: np.ndarray  # (h, w) uint32 global nucleus IDs
    transcripts: TileTranscripts
    genes: list[str]
    seeds: np.ndarray | None = None  # (h, w) uint32 global IDs of nucleus-less cell seeds

    @property
    def shape(self) -> tuple[int, int]:
        return self.nuclei.shape

    def window_origin_um(self) -> tuple[float, float]:
        """µm coordinate (x, y) of the window's top-left pixel corner."""
        r0, _, c0, _ = self.tile.window
        return (
            self.origin_um[0] + c0 * self.pixel_size_um,
            self.origin_um[1] + r0 * self.pixel_size_um,
        )


@dataclass
class PrepareContext:
    """What a method may use chip-wide before the cell pass (e.g. to train a model).

    ``map_tiles(fn, indices)`` runs ``fn(TileData)`` for those tiles as Ray tasks and returns
    the results in order, so a method can sample training data from across the chip without
    the driver ever holding the chip.
    """

    chip: "Chip"
    config: "PipelineConfig"
    grid: "TileGrid"
    genes: list[str]
    map_tiles: Callable[[Callable[[TileData], Any], list[int]], list[Any]]
    n_nuclei: int = 0


class CellMethod:
    """Base class. Subclasses set ``name`` and implement :meth:`segment`."""

    name: str = ""
    #: True for methods that hold a model: the cell stage then runs in (GPU) actors, loaded once.
    uses_model: bool = False
    #: False for methods that never look at the image, so tiles skip reading it.
    uses_image: bool = True

    def __init__(self, config: "PipelineConfig", platform: str = "generic"):
        self.config = config
        self.platform = platform

    def reach_um(self) -> float:
        """How far from a nucleus a cell may extend; the halo must cover it."""
        return self.config.cells.cell_diameter_um

    def actor_resources(self) -> tuple[int, float]:
        """(number of actors, GPUs per actor) for methods with a model; GPUs used only if present."""
        return (1, 0.0)

    def prepare(self, ctx: PrepareContext) -> Any:
        """Chip-wide work before the cell pass; returns a picklable state (e.g. weights)."""
        return None

    def describe_state(self, state: Any) -> dict:
        """What run.json records of :meth:`prepare`'s state (e.g. training losses), JSON-able."""
        return {}

    def load(self, state: Any) -> None:
        """Called once per worker with :meth:`prepare`'s state before any tile."""

    def find_seeds(self, data: TileData) -> np.ndarray | None:
        """Optional: labels (local IDs) of cells with no nucleus, found in this window.

        The driver owns each seed by its centroid's tile and gives it a global ID, exactly like
        nuclei; the seeds then come back in ``TileData.seeds`` for :meth:`segment`.
        """
        return None

    def segment(self, data: TileData) -> np.ndarray:
        """Cell labels (uint32, global IDs from ``data.nuclei`` / ``data.seeds``) over the window."""
        raise NotImplementedError


def train_where_gpu(train, num_gpus: float):
    """``train`` itself, or, when the Ray cluster has a GPU and the method asks for one, ``train``
    wrapped to run in a Ray task holding a GPU (weights come back through the object store)."""
    try:
        import ray
    except ImportError:
        return train
    if not (ray.is_initialized() and num_gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0):
        return train

    def remote(*args, **kwargs):
        kwargs.pop("log", None)  # a driver-side logger does not travel to the task
        task = ray.remote(train).options(num_gpus=1, max_retries=2)
        return ray.get(task.remote(*args, **kwargs))

    return remote

"""The one lifecycle of every per-tile plugin (nuclei backends and cell methods).

1. ``prepare(ctx) -> state``: chip-wide work, once per run, in the driver; it reaches tiles only
   through ``ctx.map_tiles`` (run on the cluster), so the driver never holds the chip. The state
   is plain data, saved in the run's work dir and reused on resume (e.g. a threshold, weights).
2. ``load(state)``: once per worker (a Ray task, or an actor for its whole life) before any tile.
3. ``segment(tile)``: one tile window.

``compute()`` declares how the stage runs (tasks, or an actor pool holding GPUs); the run's
``resources.<stage>`` section may override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .io.chip import Chip
    from .tiling import TileGrid


@dataclass(frozen=True)
class Compute:
    """How a stage runs: Ray tasks (``actors == 0``), or a pool of ``actors`` actors that each
    load their model once and hold ``num_gpus`` GPUs (only where the cluster has GPUs)."""

    actors: int = 0
    num_gpus: float = 0.0


def _as_is(train: Callable) -> Callable:
    return train


@dataclass
class PrepareContext:
    """What ``prepare`` may use chip-wide.

    ``map_tiles(fn, indices, desc="prepare")`` runs ``fn`` for those tiles on the cluster and
    returns the results in order (``desc`` names the pass's progress bar): a nuclei backend's
    ``fn`` gets the :class:`~stseg_dist.tiling.Tile` (it reads its own window), a cell method's
    gets the tile's :class:`~stseg_dist.tiledata.TileData`.
    ``train_where_gpu(train)`` returns ``train``, or a wrapper that runs it in a Ray task holding
    a GPU when the stage asks for GPUs and the cluster has one (the executor decides).
    """

    chip: "Chip"
    config: "PipelineConfig"
    grid: "TileGrid"
    genes: list[str]
    map_tiles: Callable[..., list[Any]]
    n_nuclei: int = 0
    train_where_gpu: Callable[[Callable], Callable] = _as_is


class Plugin:
    """Base of nuclei backends and cell methods: the lifecycle above, with no-op defaults."""

    name: str = ""

    def compute(self) -> Compute:
        """Ray tasks by default; a plugin that holds a model asks for an actor pool."""
        return Compute()

    def prepare(self, ctx: PrepareContext) -> Any:
        """Chip-wide work before the stage's tiles; returns plain data (None: nothing to share)."""
        return None

    def load(self, state: Any) -> None:
        """Called once per worker with :meth:`prepare`'s state before any tile."""

    def describe_state(self, state: Any) -> dict:
        """What run.json records of :meth:`prepare`'s state (e.g. training losses), JSON-able."""
        return {}

    def segment(self, tile: Any) -> Any:
        """Labels over one tile's window."""
        raise NotImplementedError

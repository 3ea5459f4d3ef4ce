"""The one lifecycle of every per-tile plugin (nuclei backends and cell methods).

1. ``prepare(ctx) -> state``: chip-wide work, once per run, in the driver; it reaches tiles only
   through ``ctx.map_tiles`` (run on the cluster), so the driver never holds the chip. The state
   is plain data, saved in the run's work dir and reused on resume (e.g. a threshold, weights).
2. ``load(state)``: once per worker (a Ray task, or an actor for its whole life) before any tile.
3. ``segment(tile)``: one tile window.

``compute()`` declares how the stage runs (:class:`Resources`: tasks, or an actor pool holding
GPUs); the run's ``resources.<stage>`` section, the same type, may override it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .io.chip import Chip
    from .tiling import TileGrid


@dataclass
class Resources:
    """How a stage runs on Ray, the one declaration of it: Ray tasks (``actors`` 0), or a pool of
    ``actors`` actors that each load their model once; each task or actor holds ``num_cpus``,
    ``num_gpus`` (only where the cluster has GPUs) and ``memory_gb``.

    A plugin declares one (``compute()``); the run's ``resources.<stage>`` section is one too,
    whose set values win (None: keep the plugin's); :meth:`resolve` gives what runs.
    """

    num_cpus: float = 1.0
    num_gpus: float | None = None  # per task or actor
    memory_gb: float | None = None
    actors: int | None = None  # 0 or None: Ray tasks; N: a pool of N actors

    def validate(self, key: str, root: object = None) -> None:
        from .settings import positive, positive_or_none, require

        positive(self, key, "num_cpus")
        positive_or_none(self, key, "memory_gb")
        for name in ("num_gpus", "actors"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{key}.{name} must be >= 0, got {value}")

    def resolve(
        self, section: Resources | None = None, has_gpu: bool = True, cpus: int = 1
    ) -> Resources:
        """What runs: ``section``'s set values over this declaration; GPUs only where the cluster
        has some (a GPU request on a CPU cluster would never schedule).

        A model pool on a cluster without GPUs gets one actor per ``num_cpus`` of the cluster's
        ``cpus`` (unless the section sets ``actors``): the declared single actor is sized for a
        GPU, and on CPUs it would leave every core but one idle.
        """
        section = section or Resources()
        gpus = self.num_gpus if section.num_gpus is None else section.num_gpus
        actors = (self.actors if section.actors is None else section.actors) or 0
        if section.actors is None and actors and not has_gpu:
            actors = max(actors, int(cpus // section.num_cpus))
        memory = section.memory_gb if section.memory_gb is not None else self.memory_gb
        return Resources(
            num_cpus=section.num_cpus,
            num_gpus=float(gpus or 0.0) if has_gpu else 0.0,
            memory_gb=memory,
            actors=int(actors),
        )

    def options(self) -> dict:
        """Ray's options for one task or actor (of a resolved declaration)."""
        opts: dict = {"num_cpus": self.num_cpus, "num_gpus": float(self.num_gpus or 0.0)}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 2**30)
        return opts


#: The former name of :class:`Resources`, for plugins written against it.
Compute = Resources


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

    chip: Chip
    config: PipelineConfig
    grid: TileGrid
    genes: list[str]
    map_tiles: Callable[..., list[Any]]
    n_nuclei: int = 0
    train_where_gpu: Callable[[Callable], Callable] = _as_is


class Plugin:
    """Base of nuclei backends and cell methods: the lifecycle above, with no-op defaults."""

    name: str = ""

    def compute(self) -> Resources:
        """Ray tasks by default; a plugin that holds a model asks for an actor pool."""
        return Resources()

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

"""The tile grid: cores partition the image, halos add the context a tile's kernels need.

Cores are whole multiples of the output zarr chunk, so tiles write disjoint chunks and never
race. A pixel, a nucleus centroid and a transcript are each owned by exactly one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import PipelineConfig


@dataclass(frozen=True)
class Tile:
    index: int
    grid_row: int
    grid_col: int
    core: tuple[int, int, int, int]  # r0, r1, c0, c1 in image pixels (half-open)
    window: tuple[int, int, int, int]  # core + halo, clipped to the image

    @property
    def window_slices(self) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.window
        return slice(r0, r1), slice(c0, c1)

    @property
    def core_slices(self) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.core
        return slice(r0, r1), slice(c0, c1)

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """Slices of the core within a window-shaped array."""
        r0, r1, c0, c1 = self.core
        wr0, _, wc0, _ = self.window
        return slice(r0 - wr0, r1 - wr0), slice(c0 - wc0, c1 - wc0)

    @property
    def window_shape(self) -> tuple[int, int]:
        r0, r1, c0, c1 = self.window
        return (r1 - r0, c1 - c0)

    def core_contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r0, r1, c0, c1 = self.core
        return (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)


@dataclass(frozen=True)
class TileGrid:
    shape: tuple[int, int]
    core_px: int
    halo_px: int
    chunk_px: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __getitem__(self, i: int) -> Tile:
        return self.tiles[i]

    @property
    def n_rows(self) -> int:
        return math.ceil(self.shape[0] / self.core_px)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.shape[1] / self.core_px)

    def neighbours(self, tile: Tile) -> list[Tile]:
        """Tiles whose windows overlap this tile's window (itself included)."""
        reach = math.ceil(2 * self.halo_px / self.core_px) + 1
        out = []
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                r, c = tile.grid_row + dr, tile.grid_col + dc
                if 0 <= r < self.n_rows and 0 <= c < self.n_cols:
                    other = self.tiles[r * self.n_cols + c]
                    if _overlap(tile.window, other.window):
                        out.append(other)
        return out


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def halo_um(config: PipelineConfig, reach_um: float, nuclei_context_um: float = 0.0) -> float:
    """The halo, decided here only: ``tiling.halo_um`` when set, else wide enough that a core
    pixel's cell (up to ``reach_um`` from its nucleus, the method's reach) and the nuclei it grows
    from are seen whole, that the nuclei backend's own context (``nuclei_context_um``: what makes
    classical nuclei exact) is inside every window, and never below twice the larger of the cell
    diameter and the expansion span plus a nucleus diameter.
    """
    if config.tiling.halo_um is not None:
        return float(config.tiling.halo_um)
    floor = (
        2.0 * max(config.cells.cell_diameter_um, config.cells.expansion.distance_um * 2)
        + config.nuclei.diameter_um
    )
    need = 2.0 * reach_um + 2.0 * config.nuclei.diameter_um
    return max(floor, need, nuclei_context_um)


def make_grid(
    shape: tuple[int, int], pixel_size_um: float, tile_size_um: float, halo_um: float, chunk_px: int
) -> TileGrid:
    """Grid over an image of ``shape`` pixels; cores rounded to whole chunks."""
    if tile_size_um <= 0:
        raise ConfigError(f"tiling.tile_size_um must be positive, got {tile_size_um}")
    if halo_um < 0:
        raise ConfigError(f"tiling.halo_um must not be negative, got {halo_um}")
    if chunk_px <= 0:
        raise ConfigError(f"tiling.chunk_px must be positive, got {chunk_px}")
    h, w = int(shape[0]), int(shape[1])
    core_px = max(1, round(tile_size_um / pixel_size_um / chunk_px)) * chunk_px
    halo_px = int(math.ceil(halo_um / pixel_size_um))
    tiles = []
    n_rows, n_cols = math.ceil(h / core_px), math.ceil(w / core_px)
    for gr in range(n_rows):
        for gc in range(n_cols):
            r0, c0 = gr * core_px, gc * core_px
            r1, c1 = min(h, r0 + core_px), min(w, c0 + core_px)
            window = (
                max(0, r0 - halo_px),
                min(h, r1 + halo_px),
                max(0, c0 - halo_px),
                min(w, c1 + halo_px),
            )
            tiles.append(Tile(len(tiles), gr, gc, (r0, r1, c0, c1), window))
    return TileGrid((h, w), core_px, halo_px, chunk_px, tuple(tiles))

"""The data model of one tile: :class:`TileData` (what a cell method sees), :class:`TileResult`
(what it returns) and the loader.

The loader reads a tile's window of transcripts (and image), mapped to window pixels.
Ownership of a transcript is decided on its pixel index alone (``Chip.um_to_px``), one formula
used by every tile, so a transcript on a tile border is counted by exactly one tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import constants as K
from .io.chip import Chip
from .io.transcripts import ROW
from .tiling import Tile


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
    image: np.ndarray  # (C, h, w) window of every image channel
    nuclei: np.ndarray  # (h, w) uint32 global nucleus IDs
    transcripts: TileTranscripts
    genes: list[str]
    seeds: np.ndarray | None = None  # (h, w) uint32 global IDs of nucleus-less cell seeds
    # How to open the chip's files (credentials), for a method that reads beyond the window
    # (membrane's track-line registration reads its stain through a chip-wide transform).
    storage_options: dict = field(default_factory=dict)

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
class TileResult:
    """What a cell method returns for one tile (see :meth:`CellMethod.segment`).

    ``labels`` is required: global cell IDs over the window, from which the cell table's areas
    and centroids, the label arrays and the outlines come. A method that decides transcripts
    itself (e.g. Proseg- or Baysor-like, or a spillover pass) also gives ``cell_id`` (and
    optionally ``in_nucleus``) for every transcript of ``TileData.transcripts``, halo included,
    in the same order; only the core's transcripts are kept, so each is counted once chip-wide.
    Every cell a transcript is given to must have pixels in ``labels`` somewhere on the chip.
    """

    labels: np.ndarray  # (h, w) global cell IDs over the window (0 = no cell)
    cell_id: np.ndarray | None = None  # per transcript, 0 = none; None: the cell under its pixel
    in_nucleus: np.ndarray | None = None  # per transcript; None: whether its pixel is a nucleus
    # Nuclei (and seeds) keep their own cell in ``labels``, whatever the method predicted there
    # (the pixel lookup then follows the overridden labels; a given ``cell_id`` is kept as is).
    nuclei_override: bool = True

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> TileResult:
        """A pixel method's result: labels only; nuclei override them, transcripts take the cell
        under their pixel.
        """
        return cls(labels=labels)

    def resolve(self, data: TileData, method: str = "") -> TileResult:
        """The result checked against ``data``, with every part filled in: labels after the
        override (uint32), ``cell_id`` (int64) and ``in_nucleus`` (bool) for every transcript.
        """
        who = f"method {method}" if method else "cell method"
        labels = np.asarray(self.labels, dtype=np.uint32)
        if labels.shape != data.shape:
            raise RuntimeError(f"{who} returned shape {labels.shape}, expected {data.shape}")
        if self.nuclei_override:
            if data.seeds is not None:
                labels = np.where(data.seeds > 0, data.seeds, labels)
            labels = np.where(data.nuclei > 0, data.nuclei, labels)
        tx = data.transcripts
        n = len(tx)
        if self.cell_id is None:
            cell_id = labels[tx.row, tx.col].astype(np.int64)
        else:
            cell_id = _per_transcript(self.cell_id, n, np.int64, f"{who}: cell_id")
            if n and cell_id.min() < 0:
                raise RuntimeError(f"{who}: cell_id must be 0 (none) or a cell ID, got a negative")
        if self.in_nucleus is None:
            in_nucleus = data.nuclei[tx.row, tx.col] > 0
        else:
            in_nucleus = _per_transcript(self.in_nucleus, n, bool, f"{who}: in_nucleus")
        return TileResult(labels, cell_id, in_nucleus, nuclei_override=False)


def _per_transcript(values, n: int, dtype, what: str) -> np.ndarray:
    out = np.asarray(values)
    if out.shape != (n,):
        raise RuntimeError(f"{what} has shape {out.shape}; expected one per transcript, ({n},)")
    return out.astype(dtype, copy=False)


def gene_indices(column: pa.ChunkedArray | pa.Array, vocabulary: dict[str, int]) -> np.ndarray:
    """Map gene strings to vocabulary indices via the column's dictionary (fast on millions)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    # A stored dictionary (a categorical column) may list genes no row uses; the scan's vocabulary
    # holds only the genes that occur, so unused entries map to -1 and must stay unused.
    names = arr.dictionary.to_pylist()
    lut = np.array([vocabulary.get(g, -1) for g in names], dtype=np.int32)
    idx = arr.indices.to_numpy(zero_copy_only=False)
    out = lut[idx] if len(lut) else np.zeros(len(idx), np.int32)
    if (out < 0).any():
        raise KeyError(names[int(idx[np.flatnonzero(out < 0)[0]])])
    return out


def read_tile_transcripts(
    chip: Chip, tile: Tile, vocabulary: dict[str, int], columns: list[str] | None = None
) -> tuple[TileTranscripts, pa.Table]:
    """Transcripts whose pixel falls in the tile window, plus the raw table for outputs.

    Coordinates within a pixel of the image edge are clipped onto the edge pixel (the scan
    stage has already rejected anything further out).
    """
    h, w = chip.shape_yx
    ps = chip.pixel_size_um
    x0, y0 = chip.origin_um
    r0, r1, c0, c1 = tile.window
    # One pixel of slack on each side; the pixel index below decides exactly.
    xr = (x0 + (c0 - 1) * ps if c0 > 0 else -np.inf, x0 + (c1 + 1) * ps if c1 < w else np.inf)
    yr = (y0 + (r0 - 1) * ps if r0 > 0 else -np.inf, y0 + (r1 + 1) * ps if r1 < h else np.inf)
    table = chip.transcripts.read_window(xr, yr, columns)
    x = table.column(K.X).to_numpy(zero_copy_only=False).astype(np.float64)
    y = table.column(K.Y).to_numpy(zero_copy_only=False).astype(np.float64)
    row, col = chip.um_to_px(x, y)
    np.clip(row, 0, h - 1, out=row)
    np.clip(col, 0, w - 1, out=col)
    inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    if not inside.all():
        table = table.filter(pa.array(inside))
        x, y, row, col = x[inside], y[inside], row[inside], col[inside]
    tx = TileTranscripts(
        x=x,
        y=y,
        gene=gene_indices(table.column(K.GENE), vocabulary),
        row=row - r0,
        col=col - c0,
        in_core=tile.core_contains(row, col),
        row_index=table.column(ROW).to_numpy(),
    )
    return tx, table


def load_tile_data(
    chip: Chip,
    tile: Tile,
    genes: list[str],
    nuclei: np.ndarray,
    seeds: np.ndarray | None = None,
    with_image: bool = True,
) -> tuple[TileData, pa.Table]:
    vocabulary = {g: i for i, g in enumerate(genes)}
    tx, table = read_tile_transcripts(chip, tile, vocabulary)
    rows, cols = tile.window_slices
    if with_image:
        image = np.stack([chip.read_image(rows, cols, c) for c in range(chip.n_channels)])
    else:
        image = np.zeros((0, *tile.window_shape), np.uint16)
    data = TileData(
        tile=tile,
        pixel_size_um=chip.pixel_size_um,
        origin_um=chip.origin_um,
        image=image,
        nuclei=nuclei,
        transcripts=tx,
        genes=genes,
        seeds=seeds,
        storage_options=dict(chip.storage_options),
    )
    return data, table

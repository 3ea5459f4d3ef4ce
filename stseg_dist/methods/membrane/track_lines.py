"""``cells.membrane.registration: track_lines``: the stain registered to the expression map by the
chip's track lines (STCellbin, Zhang et al. 2024), estimated once per chip and read through per
tile.

:func:`prepare_track_lines` (the method's ``prepare``) builds the chip-wide expression map
(transcript counts) and the stain, both downsampled by ``register_downsample`` on bins anchored
to the chip (each tile contributes its core's transcripts and the bins that start in its core,
so the maps do not depend on the tiling), then fits the similarity with
:func:`.registration.register_track_lines`. :class:`StainReader` (the method's ``load``) reads a
tile's stain through that transform (:func:`.registration.read_through`), so every tile sees the
same registered stain whatever the tiling. Memory: the two maps are the chip at 1/``factor``²
of its pixels (a 1 cm Stereo-seq chip at 0.5 µm, factor 4: 5000 x 5000 float32, 100 MB each).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ...errors import InputError
from ...io.chip import ImageSpec, open_image
from ..base import PrepareContext, TileData
from .registration import downsample, read_through, register_track_lines

log = logging.getLogger(__name__)


def prepare_track_lines(ctx: PrepareContext, cfg) -> dict:
    """State for :class:`StainReader`: the transform (3x3, transcript-frame pixels to stain
    pixels), where the stain is, and what the fit found (for run.json).
    """
    chip, f, ch = ctx.chip, cfg.register_downsample, cfg.channel
    h, w = chip.shape_yx
    bh, bw = h // f, w // f
    if bh < 16 or bw < 16:
        raise InputError(
            f"{chip.url}: the chip is {h} x {w} px, too small to register by track lines at "
            f"cells.membrane.register_downsample = {f}"
        )

    def maps(data: TileData):
        r0, r1, c0, c1 = data.tile.core
        wr0, _, wc0, _ = data.tile.window
        tx = data.transcripts
        own = tx.in_core
        br, bc = (tx.row[own] + wr0) // f, (tx.col[own] + wc0) // f
        keep = (br < bh) & (bc < bw)
        rows = (int(math.ceil(r0 / f)), min(bh, int(math.ceil(r1 / f))))
        cols = (int(math.ceil(c0 / f)), min(bw, int(math.ceil(c1 / f))))
        stain = None
        if rows[0] < rows[1] and cols[0] < cols[1]:
            stain = downsample(
                chip.read_image(
                    slice(rows[0] * f, rows[1] * f), slice(cols[0] * f, cols[1] * f), ch
                ),
                f,
            )
        return br[keep].astype(np.int64) * bw + bc[keep], rows, cols, stain

    expression = np.zeros(bh * bw, np.float64)
    stain = np.full((bh, bw), np.nan, np.float32)
    for flat, rows, cols, block in ctx.map_tiles(maps, list(range(len(ctx.grid)))):
        expression += np.bincount(flat, minlength=bh * bw)
        if block is not None:
            stain[rows[0] : rows[1], cols[0] : cols[1]] = block
    fit = register_track_lines(
        expression.reshape(bh, bw),
        stain,
        f,
        cfg.track_line_um / (chip.pixel_size_um * f),
        where=f"{chip.url} (membrane channel {ch})",
        min_margin=cfg.register_min_margin,
    )
    facts = {
        "lines_matched": fit.lines,
        "lines_in_stain": fit.lines_found,
        "runner_up_lines": fit.runner_up,
        "residual_px": round(fit.residual_px, 3),
        "angle_deg": round(fit.angle_deg, 3),
        "scale": round(fit.scale, 5),
        "orientation": fit.orientation,
    }
    log.info("membrane stain registered to the expression map by track lines: %s", facts)
    spec = chip.image
    return {
        "transform": [[float(v) for v in row] for row in fit.matrix],
        "stain": {
            "url": spec.url,
            "format": spec.format,
            "series": spec.series,
            "level": spec.level,
        },
        "registration": facts,
    }


class StainReader:
    """Reads the stain channel through the chip-wide transform, for one tile window at a time.

    Workers reopen the stain from its URL with the tile's storage options (the state holds none:
    they may carry credentials, and the state is logged).
    """

    def __init__(self, state: dict, channel: int):
        self.matrix = np.asarray(state["transform"], np.float64)
        self.spec = ImageSpec(**state["stain"])
        self.channel = channel
        self._array = None

    def _open(self, storage_options: dict):
        if self._array is None:
            self._array = open_image(self.spec, storage_options)
        return self._array

    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        a = self._array
        if a.ndim == 2 or self.channel >= a.shape[0]:
            raise InputError(
                f"{self.spec.url}: no membrane stain: cells.membrane.channel is {self.channel} "
                f"but the image has shape {tuple(a.shape)}"
            )
        return np.asarray(a[self.channel, rows, cols])

    def window(
        self, window: tuple[int, int, int, int], storage_options: dict | None = None
    ) -> np.ndarray:
        shape = tuple(int(v) for v in self._open(storage_options or {}).shape[-2:])
        return read_through(self._read, shape, self.matrix, window)

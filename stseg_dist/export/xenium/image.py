"""``morphology.ome.tif``: the chip's stain as a tiled uint8 pyramid the Explorer displays:
at least ``MIN_LEVELS`` levels (full resolution and 5 halvings, as sopa writes), more until the
top level fits one tile.

The stain is scaled once per channel (0 to its 99.9th percentile, from a strided sample) and
written level by level: each level is computed chunk-wise from the previous one, kept on disk as
zarr beside the export, so memory stays at a few tiles whatever the chip size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

TILE = 1024
MIN_LEVELS = 6  # full resolution and 5 halvings, as sopa's writer (the Explorer zooms out on them)
MAX_LEVELS = 12
SAMPLE_PX = 2_000_000


def _levels(src, scratch: Path) -> list:
    import dask.array as da

    arr = da.from_array(src, chunks=(1, TILE, TILE) if src.ndim == 3 else (TILE, TILE))
    if arr.ndim == 2:
        arr = arr[None]
    h, w = arr.shape[1:]
    stride = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE_PX))))
    sample = np.asarray(src[..., ::stride, ::stride], np.float64).reshape(arr.shape[0], -1)
    top = np.maximum(np.percentile(sample, 99.9, axis=1), 1e-12)[:, None, None]
    level = (da.clip(arr.astype(np.float32) / top, 0, 1) * 255).astype(np.uint8)
    out = []
    for i in range(MAX_LEVELS):
        url = str(scratch / str(i))
        level.rechunk((1, TILE, TILE)).to_zarr(url, overwrite=True)
        level = da.from_zarr(url)
        out.append(level)
        if (i + 1 >= MIN_LEVELS and max(level.shape[1:]) <= TILE) or min(level.shape[1:]) < 2:
            break
        level = da.coarsen(
            np.mean, level.astype(np.float32), {1: 2, 2: 2}, trim_excess=True
        ).astype(np.uint8)
    return out


def _tiles(level):
    c, h, w = level.shape
    for ch in range(c):
        for r in range(0, h, TILE):
            for col in range(0, w, TILE):
                yield np.asarray(level[ch, r : r + TILE, col : col + TILE])


def write_morphology(path: Path, chip, scratch: Path) -> None:
    import tifffile

    scratch.mkdir(parents=True)
    try:
        levels = _levels(chip._image_array(), scratch)
        ps = float(chip.pixel_size_um)
        from ..spatialdata import channel_names

        meta_extra = getattr(getattr(chip, "meta", None), "extra", {}) or {}
        names = channel_names(meta_extra, levels[0].shape[0])
        meta = {
            "axes": "CYX",
            "SignificantBits": 8,
            "PhysicalSizeX": ps,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": ps,
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": names},
        }
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            for i, level in enumerate(levels):
                res = 1e4 / (ps * 2**i)  # pixels per cm
                kwargs = (
                    {"subifds": len(levels) - 1, "metadata": meta} if i == 0 else {"subfiletype": 1}
                )
                tif.write(
                    _tiles(level),
                    shape=level.shape,
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    photometric="minisblack",
                    compression="jpeg2000",
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    **kwargs,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

"""Stream any x/y/gene transcript table into the canonical chip; shared by every vendor reader.

Three passes over the input batches keep memory bounded by one band of the chip:
1. extent and count; 2. bucket rows into per-band temporary parquet files;
3. per band: sort by column block then y, write one row group per block (the pipeline prunes
tile reads by row-group statistics), and render the band of the image.

Image-less bundles (Xenium preview, Stereo-seq GEM) get a *transcript density image* on the
platform pixel grid as channel 0, recorded as ``"image_source": "transcript_density"`` in
chip.json, because the pipeline needs an image grid; vendor nuclei polygons, when given, are
rasterised into ``nuclei.zarr`` so ``nuclei.backend=vendor`` works.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import constants as K
from ..errors import InputError
from .chip_writer import ChipWriter

BAND_PX = 512

Batches = Callable[[], Iterable[pa.Table]]


def write_chip(
    batches: Batches,
    out_url: str,
    pixel_size_um: float,
    platform: str,
    *,
    source: str,
    grid: tuple[tuple[float, float], tuple[int, int]] | None = None,
    image: dict | None = None,
    paint_image: Callable[[int, int, int], np.ndarray] | None = None,
    nuclei: list[tuple[int, np.ndarray, np.ndarray]] | None = None,
    arrays: dict[str, Callable[[int, int, int], np.ndarray]] | None = None,
    meta_extra: dict | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Write the chip; ``batches()`` must yield canonical tables (x, y µm; gene; extras) each call.

    ``grid`` is (origin_um, (H, W)) of a vendor image; without it the grid covers the transcripts.
    ``image`` is a lazy image reference for chip.json; ``paint_image(r0, r1, W)`` returns rows
    r0..r1 of channel 0 to copy into image.zarr; with neither a density image is rendered.
    ``nuclei`` are (label, x_um, y_um) polygons; ``arrays`` paint extra label arrays band by band.
    """
    ps = float(pixel_size_um)
    n = 0
    lo = [math.inf, math.inf]
    hi = [-math.inf, -math.inf]
    for t in batches():
        if t.num_rows == 0:
            continue
        n += t.num_rows
        for i, c in enumerate((K.X, K.Y)):
            mm = pc.min_max(t[c])
            lo[i] = min(lo[i], mm["min"].as_py())
            hi[i] = max(hi[i], mm["max"].as_py())
    if n == 0:
        raise InputError(f"{source}: no transcripts left to convert (empty bundle or everything filtered)")
    if grid is not None:
        origin, (h, w) = (tuple(map(float, grid[0])), tuple(map(int, grid[1])))
        x1, y1 = origin[0] + w * ps, origin[1] + h * ps
        tol = max(2 * ps, 1.0)  # µm; vendor transforms are rounded
        if lo[0] < origin[0] - tol or lo[1] < origin[1] - tol or hi[0] > x1 + tol or hi[1] > y1 + tol:
            raise InputError(
                f"{source}: transcript extent x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f} µm "
                f"lies outside the image (x {origin[0]:.1f}..{x1:.1f}, y {origin[1]:.1f}..{y1:.1f} µm: "
                f"{w}x{h} px at {ps} µm/px)"
            )
    else:
        origin = (math.floor(lo[0] / ps) * ps, math.floor(lo[1] / ps) * ps)
        w = int((hi[0] - origin[0]) // ps) + 1
        h = int((hi[1] - origin[1]) // ps) + 1
    n_bands = (h + BAND_PX - 1) // BAND_PX
    meta = dict(meta_extra or {})
    density = image is None and paint_image is None
    meta["image_source"] = "transcript_density" if density else "vendor_image"
    if image is not None:
        meta["image"] = image
    painters = dict(arrays or {})
    if nuclei is not None:
        painters[K.NUCLEI_ZARR] = lambda r0, r1, ww: rasterise(nuclei, origin, ps, r0, r1, ww)
    with tempfile.TemporaryDirectory(prefix="stseg_convert_") as tmp:
        writers: dict[int, pq.ParquetWriter] = {}
        schema = None
        for t in batches():
            if t.num_rows == 0:
                continue
            schema = schema or t.schema
            t = t.cast(schema)
            r = np.floor((t[K.Y].to_numpy() - origin[1]) / ps).astype(np.int64)
            band = np.clip(r // BAND_PX, 0, n_bands - 1)
            for b in np.unique(band):
                if b not in writers:
                    writers[b] = pq.ParquetWriter(str(Path(tmp) / f"b{b}.parquet"), schema)
                writers[b].write_table(t.filter(pa.array(band == b)))
        for wr in writers.values():
            wr.close()
        with ChipWriter(
            out_url, shape=(1, h, w), pixel_size_um=ps, origin_um=origin, platform=platform,
            extra_arrays={rel: K.LABEL_DTYPE for rel in painters}, meta_extra=meta,
            transcript_schema=schema, overwrite=overwrite, storage_options=storage_options,
        ) as cw:
            for b in range(n_bands):
                r0, r1 = b * BAND_PX, min(h, (b + 1) * BAND_PX)
                if b in writers:
                    t = pq.read_table(str(Path(tmp) / f"b{b}.parquet"))
                    x = t[K.X].to_numpy()
                    y = t[K.Y].to_numpy()
                    c = np.clip(((x - origin[0]) / ps).astype(np.int64), 0, w - 1)
                    r = np.clip(((y - origin[1]) / ps).astype(np.int64), 0, h - 1)
                    order = np.lexsort((x, y, c // BAND_PX))
                    t = t.take(pa.array(order))
                    blocks = (c // BAND_PX)[order]
                    cuts = np.flatnonzero(np.diff(blocks)) + 1
                    for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(blocks)]):
                        cw.write_transcripts(t.slice(int(s), int(e - s)))
                    if density:
                        dens = np.zeros((r1 - r0, w), np.uint32)
                        np.add.at(dens, (r - r0, c), 1)
                        cw.write_image(np.s_[0:1, r0:r1, :], np.minimum(dens, 65535).astype(np.uint16)[None])
                if paint_image is not None:
                    cw.write_image(np.s_[0:1, r0:r1, :], np.asarray(paint_image(r0, r1, w))[None])
                for rel, paint in painters.items():
                    cw.write_array(rel, np.s_[r0:r1, :], paint(r0, r1, w))
    return {"n_transcripts": n, "shape_yx": [h, w], "origin_um": list(origin), "pixel_size_um": ps,
            "image_source": meta["image_source"]}


def rasterise(polys, origin, ps, r0, r1, w) -> np.ndarray:
    """Paint label polygons (µm vertices) into rows r0..r1 of the grid."""
    from skimage.draw import polygon

    out = np.zeros((r1 - r0, w), np.uint32)
    for label, xs, ys in polys:
        rr = (ys - origin[1]) / ps - 0.5
        cc = (xs - origin[0]) / ps - 0.5
        if rr.max() < r0 or rr.min() >= r1:
            continue
        pr, pcc = polygon(rr - r0, cc, shape=out.shape)
        out[pr, pcc] = label
    return out


def polygons_from_vertex_table(df, id_col: str, x_col: str, y_col: str, source: str):
    """Group a vertex table into polygons with labels 1..n (sorted vendor IDs); returns (polys, id->label)."""
    for col in (id_col, x_col, y_col):
        if col not in df.columns:
            raise InputError(f"{source}: missing column {col!r} (expected {id_col}, {x_col}, {y_col})")
    ids = sorted(df[id_col].astype(str).unique())
    lut = {v: i + 1 for i, v in enumerate(ids)}
    polys = [(lut[str(k)], g[x_col].to_numpy(float), g[y_col].to_numpy(float))
             for k, g in df.groupby(id_col, sort=False)]
    return polys, lut


def require_columns(names: Iterable[str], required: Iterable[str], source: str) -> None:
    """Raise an InputError naming the file and the first missing column."""
    names = set(names)
    for col in required:
        if col not in names:
            raise InputError(f"{source}: missing column {col!r} (has {sorted(names)})")


def convert_generic(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    """Any parquet/CSV with x/y/gene columns (names via options) plus an optional TIFF image."""
    from . import storage

    xcol, ycol, gcol = options.get("x", "x"), options.get("y", "y"), options.get("gene", "gene")
    ps = options.get("pixel_size_um")
    if ps is None:
        raise InputError(f"{input_url}: generic input needs options['pixel_size_um']")
    fs, path = storage.fs_and_path(input_url, so)
    if fs.isdir(path):
        files = [p for p in fs.ls(path, detail=False) if p.endswith((".parquet", ".csv", ".csv.gz"))]
        if not files:
            raise InputError(f"{input_url}: no .parquet/.csv transcript table in the folder")
        path = sorted(files)[0]

    def batches():
        for t in iter_table(fs, path, input_url):
            require_columns(t.column_names, (xcol, ycol, gcol), path)
            yield pa.table({K.X: pc.cast(t[xcol], pa.float64()), K.Y: pc.cast(t[ycol], pa.float64()),
                            K.GENE: pc.cast(t[gcol], pa.string())})

    image = grid = None
    if options.get("image"):
        import tifffile

        ifs, ipath = storage.fs_and_path(options["image"], so)
        with ifs.open(ipath, "rb") as fh:
            shape = tuple(tifffile.TiffFile(fh).series[0].shape[-2:])
        image = {"path": options["image"], "format": "tiff", "series": 0, "level": 0}
        grid = (tuple(options.get("origin_um", (0.0, 0.0))), shape)
    rep = write_chip(batches, out_url, ps, "generic", source=input_url, image=image, grid=grid,
                     overwrite=overwrite, storage_options=so)
    return rep


def iter_table(fs, path: str, source: str, batch_rows: int = 1 << 20, **csv_kw):
    """Yield pyarrow tables from a parquet or (gzipped) CSV file, streaming."""
    import pyarrow.csv as pcsv

    try:
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 22)  # else whole-file buffering
                for b in pf.iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([b])
        else:
            comp = "gzip" if path.endswith(".gz") else None
            with fs.open(path, "rb", compression=comp) as fh:
                reader = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=1 << 24), **csv_kw)
                for b in reader:
                    yield pa.Table.from_batches([b])
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise InputError(f"{source}: cannot read {path}: {e}") from e

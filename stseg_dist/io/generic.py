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
import posixpath
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import constants as K
from ..errors import InputError
from .chip_writer import ChipWriter
from .options import Option, options_doc

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
    polygons: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] | None = None,
    arrays: dict[str, Callable[[int, int, int], np.ndarray]] | None = None,
    meta_extra: dict | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Write the chip; ``batches()`` must yield canonical tables (x, y µm; gene; extras) each call.

    ``grid`` is (origin_um, (H, W)) of a vendor image; without it the grid covers the transcripts.
    ``image`` is a lazy image reference for chip.json; ``paint_image(r0, r1, W)`` returns rows
    r0..r1 of channel 0 to copy into image.zarr; with neither a density image is rendered.
    ``polygons`` maps a label array (``nuclei.zarr``, ``vendor_cells.zarr``) to (label, x_um, y_um)
    polygons rasterised into it; ``arrays`` paint extra label arrays band by band.
    """
    ps = float(pixel_size_um)
    n, origin, (h, w) = _chip_grid(batches, ps, source, grid)
    n_bands = (h + BAND_PX - 1) // BAND_PX
    meta = dict(meta_extra or {})
    density = image is None and paint_image is None
    meta["image_source"] = "transcript_density" if density else "vendor_image"
    if image is not None:
        meta["image"] = image
    painters = dict(arrays or {})
    for rel, polys in (polygons or {}).items():
        painters[rel] = lambda r0, r1, ww, _p=polys: rasterise(_p, origin, ps, r0, r1, ww)
    with tempfile.TemporaryDirectory(prefix="stseg_convert_") as tmp:
        bands, schema = _split_into_bands(batches, tmp, origin, ps, n_bands)
        with ChipWriter(
            out_url,
            shape=(1, h, w),
            pixel_size_um=ps,
            origin_um=origin,
            platform=platform,
            extra_arrays={rel: K.LABEL_DTYPE for rel in painters},
            meta_extra=meta,
            transcript_schema=schema,
            overwrite=overwrite,
            storage_options=storage_options,
        ) as cw:
            for b in range(n_bands):
                r0, r1 = b * BAND_PX, min(h, (b + 1) * BAND_PX)
                if b in bands:
                    t = pq.read_table(str(Path(tmp) / f"b{b}.parquet"))
                    x = t[K.X].to_numpy()
                    y = t[K.Y].to_numpy()
                    c = np.clip(((x - origin[0]) / ps).astype(np.int64), 0, w - 1)
                    r = np.clip(((y - origin[1]) / ps).astype(np.int64), 0, h - 1)
                    order = np.lexsort((x, y, c // BAND_PX))
                    t = t.take(pa.array(order))
                    blocks = (c // BAND_PX)[order]
                    cuts = np.flatnonzero(np.diff(blocks)) + 1
                    for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(blocks)], strict=True):
                        cw.write_transcripts(t.slice(int(s), int(e - s)))
                    if density:
                        dens = np.zeros((r1 - r0, w), np.uint32)
                        np.add.at(dens, (r - r0, c), 1)
                        cw.write_image(
                            np.s_[0:1, r0:r1, :], np.minimum(dens, 65535).astype(np.uint16)[None]
                        )
                if paint_image is not None:
                    cw.write_image(np.s_[0:1, r0:r1, :], np.asarray(paint_image(r0, r1, w))[None])
                for rel, paint in painters.items():
                    cw.write_array(rel, np.s_[r0:r1, :], paint(r0, r1, w))
    return {
        "n_transcripts": n,
        "shape_yx": [h, w],
        "origin_um": list(origin),
        "pixel_size_um": ps,
        "image_source": meta["image_source"],
    }


def _chip_grid(
    batches: Batches, ps: float, source: str, grid
) -> tuple[int, tuple[float, float], tuple[int, int]]:
    """One pass over the transcripts: their count, and the chip's (origin, (H, W)): the vendor
    image's ``grid`` (refused when the transcripts lie outside it), else the transcripts' extent.
    """
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
        raise InputError(
            f"{source}: no transcripts left to convert (empty bundle or everything filtered)"
        )
    if grid is None:
        origin = (math.floor(lo[0] / ps) * ps, math.floor(lo[1] / ps) * ps)
        return n, origin, (int((hi[1] - origin[1]) // ps) + 1, int((hi[0] - origin[0]) // ps) + 1)
    origin, (h, w) = (tuple(map(float, grid[0])), tuple(map(int, grid[1])))
    x1, y1 = origin[0] + w * ps, origin[1] + h * ps
    tol = max(2 * ps, 1.0)  # µm; vendor transforms are rounded
    if lo[0] < origin[0] - tol or lo[1] < origin[1] - tol or hi[0] > x1 + tol or hi[1] > y1 + tol:
        raise InputError(
            f"{source}: transcript extent x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f} "
            "µm "
            f"lies outside the image (x {origin[0]:.1f}..{x1:.1f}, y {origin[1]:.1f}..{y1:.1f} µm: "
            f"{w}x{h} px at {ps} µm/px)"
        )
    return n, origin, (h, w)


def _split_into_bands(
    batches: Batches, tmp: str, origin, ps: float, n_bands: int
) -> tuple[set[int], pa.Schema]:
    """Second pass: the transcripts into one temporary parquet file per band of image rows
    (``tmp/b<band>.parquet``), so each band is then sorted and written alone; returns the bands
    that hold any and the table schema.
    """
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
    return set(writers), schema


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
    """Group a vertex table into polygons with labels 1..n (sorted vendor IDs); returns
    (polys, id->label).
    """
    for col in (id_col, x_col, y_col):
        if col not in df.columns:
            raise InputError(
                f"{source}: missing column {col!r} (expected {id_col}, {x_col}, {y_col})"
            )
    ids = sorted(df[id_col].astype(str).unique())
    lut = {v: i + 1 for i, v in enumerate(ids)}
    polys = [
        (lut[str(k)], g[x_col].to_numpy(float), g[y_col].to_numpy(float))
        for k, g in df.groupby(id_col, sort=False)
    ]
    return polys, lut


def require_columns(names: Iterable[str], required: Iterable[str], source: str) -> None:
    """Raise an InputError naming the file and the first missing column."""
    names = set(names)
    for col in required:
        if col not in names:
            raise InputError(f"{source}: missing column {col!r} (has {sorted(names)})")


OPTIONS = (
    Option(
        "pixel_size_um",
        None,
        "µm per image pixel (required; the grid of the density image without one)",
    ),
    Option("x", "x", "column with x in µm"),
    Option("y", "y", "column with y in µm"),
    Option("gene", "gene", "column with the gene name"),
    Option(
        "image",
        None,
        "TIFF/OME-TIFF or zarr array (path or URL) whose channel 0 is the nuclear stain",
    ),
    Option("image_level", 0, "pyramid level of a TIFF image (pixel size scales with it)"),
    Option("origin_um", [0.0, 0.0], "µm position [x0, y0] of the image's top-left pixel corner"),
    Option(
        "coordinate_um",
        1.0,
        "µm per unit of the table's x/y and of the polygon vertices (e.g. 0.108 for "
        "MERFISH pixels)",
    ),
    Option(
        "nuclei",
        None,
        "nucleus polygons as a vertex table (cell_id, vertex_x, vertex_y; CSV or parquet, "
        "path relative to the table's folder or a URL) -> nuclei.zarr, for nuclei.backend=vendor",
    ),
    Option(
        "cells", None, "reference cell polygons, same layout -> vendor_cells.zarr (scoring only)"
    ),
    Option(
        "cell_column",
        None,
        "column with each transcript's reference cell (0, empty or UNASSIGNED = none) "
        "-> vendor_cell_label (scoring only)",
    ),
)
__doc__ += "\n" + options_doc(OPTIONS, "Generic reader (``--platform generic``) options")


def convert_generic(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    """Any parquet/CSV with x/y/gene columns (names via options) plus an optional TIFF or zarr
    image.
    """
    from . import storage

    if options["pixel_size_um"] is None:
        raise InputError(
            f"{input_url}: generic input needs --reader-option pixel_size_um=<µm per pixel>"
        )
    fs, path = storage.fs_and_path(input_url, so)
    if fs.isdir(path):
        files = [
            p for p in fs.ls(path, detail=False) if p.endswith((".parquet", ".csv", ".csv.gz"))
        ]
        if not files:
            raise InputError(f"{input_url}: no .parquet/.csv transcript table in the folder")
        path = sorted(files)[0]
    cols = (options["x"], options["y"], options["gene"])
    unit = float(options["coordinate_um"])
    if not unit > 0:
        raise InputError(f"{input_url}: reader option coordinate_um must be positive, got {unit}")
    ref_col = options["cell_column"]
    labels: dict = {}

    def batches():
        for t in iter_table(fs, path, input_url, options["batch_rows"]):
            require_columns(t.column_names, cols + ((ref_col,) if ref_col else ()), path)
            out = canonical(t, *cols, scale=(unit, unit))
            if ref_col:
                out = out.append_column("vendor_cell_label", reference_labels(t[ref_col], labels))
            yield out

    polygons = {}
    for option, rel in (("nuclei", K.NUCLEI_ZARR), ("cells", "vendor_cells.zarr")):
        if options[option]:
            given = str(options[option])
            pfs, ppath = (
                (*storage.fs_and_path(given, so),)
                if "://" in given
                else (
                    fs,
                    given
                    if given.startswith("/")
                    else posixpath.join(posixpath.dirname(path), given),
                )
            )
            polygons[rel] = _vertex_polygons(pfs, ppath, unit)
    image = grid = None
    ps = float(options["pixel_size_um"])
    if options["image"]:
        image, shape, ps = image_ref(
            options["image"], options["image"], int(options["image_level"]), ps, so
        )
        grid = (tuple(options["origin_um"]), shape)
    rep = write_chip(
        batches,
        out_url,
        ps,
        "generic",
        source=input_url,
        image=image,
        grid=grid,
        polygons=polygons or None,
        overwrite=overwrite,
        storage_options=so,
    )
    rep["n_vendor_nuclei"] = len(polygons.get(K.NUCLEI_ZARR, ()))
    return rep


def _vertex_polygons(fs, path: str, unit: float):
    """A Xenium-layout vertex table (cell_id, vertex_x, vertex_y) as µm polygons labelled 1..n."""
    if not fs.exists(path):
        raise InputError(f"{path}: polygon file not found")
    polys, _ = polygons_from_vertex_table(
        read_vertex_table(fs, path), "cell_id", "vertex_x", "vertex_y", path
    )
    return [(label, xs * unit, ys * unit) for label, xs, ys in polys]


def read_vertex_table(fs, path: str):
    """A boundary vertex table (parquet or CSV, gzipped or not) as a DataFrame."""
    import pandas as pd

    with fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None) as fh:
        try:
            return pd.read_parquet(fh) if path.endswith(".parquet") else pd.read_csv(fh)
        except Exception as e:  # truncated or not a table
            raise InputError(f"{path}: unreadable vertex table ({e})") from e


def reference_labels(column: pa.ChunkedArray, labels: dict) -> pa.Array:
    """Reference cell IDs of any type -> uint32 labels (0 = none), consistent across batches via
    ``labels``.
    """
    ids = pc.cast(column, pa.string()).to_pandas().fillna("")
    none = ids.isin(["", "0", "-1", "UNASSIGNED"])
    for v in ids[~none].unique():
        labels.setdefault(v, len(labels) + 1)
    return pa.array(np.where(none, 0, ids.map(labels).fillna(0)).astype(np.uint32))


def image_ref(
    url: str, ref_url: str, level: int, ps: float, so
) -> tuple[dict, tuple[int, int], float]:
    """Lazy reference to a TIFF (pyramid ``level``) or zarr image; returns
    (ref, (H, W), pixel size).

    ``ref_url`` is what chip.json records (the URL a worker reopens). The pixel size is scaled by
    the level's downsampling so µm stay µm.
    """
    from . import storage

    fs, path = storage.fs_and_path(url, so)
    if path.rstrip("/").endswith(".zarr"):
        try:
            shape = tuple(storage.open_zarr_array(url, "r", so).shape)
        except Exception as e:  # any unreadable store
            raise InputError(f"{url}: not a readable zarr array ({e})") from e
        return {"path": ref_url, "format": "zarr"}, shape[-2:], ps
    import tifffile

    try:
        with fs.open(path, "rb") as fh:
            s = tifffile.TiffFile(fh).series[0]
            full, lv = s.shape, s.levels[level].shape
    except (tifffile.TiffFileError, IndexError, ValueError, OSError) as e:
        raise InputError(f"{url}: unreadable TIFF or no pyramid level {level} ({e})") from e
    return (
        {"path": ref_url, "format": "tiff", "series": 0, "level": level},
        tuple(lv[-2:]),
        ps * full[-1] / lv[-1],
    )


def drop_prefixes(t: pa.Table, gene_col: str, prefixes) -> tuple[pa.Table, int]:
    """Rows whose gene starts with any prefix (control probes) removed; returns
    (table, n dropped).
    """
    gene = pc.cast(t[gene_col], pa.string())
    ctrl = np.zeros(t.num_rows, bool)
    for p in prefixes:
        ctrl |= pc.starts_with(gene, p).to_numpy(zero_copy_only=False)
    return t.filter(pa.array(~ctrl)), int(ctrl.sum())


def canonical(
    t: pa.Table, x: str, y: str, gene: str, extras=(), scale: tuple[float, float] = (1.0, 1.0)
) -> pa.Table:
    """Vendor columns -> x, y (µm, scaled), gene, plus each present (src, dst, type) extra."""
    cols = {
        K.X: pc.multiply(pc.cast(t[x], pa.float64()), scale[0]),
        K.Y: pc.multiply(pc.cast(t[y], pa.float64()), scale[1]),
        K.GENE: pc.cast(t[gene], pa.string()),
    }
    for src, dst, typ in extras:
        if src in t.column_names:
            cols[dst] = pc.cast(t[src], typ)
    return pa.table(cols)


def iter_table(fs, path: str, source: str, batch_rows: int = 1 << 20, **csv_kw):
    """Yield pyarrow tables from a parquet or (gzipped) CSV file, streaming."""
    import pyarrow.csv as pcsv

    try:
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(
                    fh, pre_buffer=False, buffer_size=1 << 22
                )  # else whole-file buffering
                for b in pf.iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([b])
        else:
            comp = "gzip" if path.endswith(".gz") else None
            with fs.open(path, "rb", compression=comp) as fh:
                reader = pcsv.open_csv(
                    fh, read_options=pcsv.ReadOptions(block_size=1 << 24), **csv_kw
                )
                for b in reader:
                    t = pa.Table.from_batches([b])
                    for s in range(0, t.num_rows, batch_rows):
                        yield t.slice(s, batch_rows)
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise InputError(f"{source}: cannot read {path}: {e}") from e

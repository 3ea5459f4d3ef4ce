"""BGI Stereo-seq GEM or GEF -> canonical chip.

GEM is tab-separated with ``#`` header lines and columns geneID, x, y, MIDCount(s) (optional
ExonCount) in DNB units (0.5 µm pitch). GEF is HDF5: ``geneExp/bin1/expression`` (compound x, y,
count[, exon], sorted by gene) and ``geneExp/bin1/gene`` (gene or geneName, offset, count: gene i
owns expression rows offset..offset+count). Both are streamed in ``batch_rows`` records.

Counts: a record with MIDCount k becomes k transcripts at the same DNB (*expanded*), so every
downstream count (cells x genes, transcripts per cell) needs no weights; the original record count
is kept in the report. No image: a transcript-density image is rendered on the DNB grid, unless a
registered ssDNA/DAPI TIFF is given (``image``, on the DNB grid with ``image_origin_dnb``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import constants as K
from ..errors import InputError
from . import storage
from .generic import image_ref, write_chip
from .options import Option, options_doc

PITCH_UM = 0.5
#: Nuclei as dense blobs of a transcript-density image (used when there is no stain).
# Density blobs with the previous classical backend, as configs/stereoseq.yaml pins it: the
# threshold is in raw counts, which the improved backend's normalisation would reinterpret.
DENSITY_NUCLEI = {
    "sigma_um": 1.5,
    "min_area_um2": 12.0,
    "threshold": 4.0,
    "normalise": False,
    "foreground": "otsu",
    "seeds": "shape",
    "peak_fraction": None,
    "learn_size": False,
}

OPTIONS = (
    Option("pixel_size_um", PITCH_UM, "µm per DNB (the bin1 pitch)"),
    Option("image", None, "registered ssDNA/DAPI TIFF (path or URL) on the DNB grid"),
    Option("image_origin_dnb", [0, 0], "DNB [x, y] of the image's top-left pixel"),
)
__doc__ += "\n" + options_doc(OPTIONS)


def is_gem(path: str) -> bool:
    return path.endswith((".gem", ".gem.gz"))


def is_gef(path: str) -> bool:
    return path.endswith(".gef")


def is_bundle(fs, path: str) -> bool:
    return any(is_gem(p) or is_gef(p) for p in fs.ls(path, detail=False))


def _expand(x, y, genes, counts, pitch: float) -> pa.Table:
    rep = np.asarray(counts, np.int64).clip(min=1)
    return pa.table(
        {
            K.X: np.repeat(np.asarray(x, float) * pitch, rep),
            K.Y: np.repeat(np.asarray(y, float) * pitch, rep),
            K.GENE: pa.array(np.repeat(np.asarray(genes), rep)),
        }
    )


def _gem_batches(fs, path, pitch, rows, stats):
    try:
        with fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None) as fh:
            for df in pd.read_csv(fh, sep="\t", comment="#", chunksize=rows):
                cnt = "MIDCount" if "MIDCount" in df.columns else "MIDCounts"
                for col in ("geneID", "x", "y", cnt):
                    if col not in df.columns:
                        raise InputError(
                            f"{path}: missing column {col!r} (expected geneID, x, y, "
                            f"MIDCount or MIDCounts; has {list(df.columns)})"
                        )
                stats["records"] += len(df)
                yield _expand(df["x"], df["y"], df["geneID"].astype(str), df[cnt], pitch)
    except (EOFError, OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: unreadable or truncated GEM file ({e})") from e


def _gef_batches(fs, path, pitch, rows, stats):
    import h5py

    try:
        with fs.open(path, "rb") as fh, h5py.File(fh, "r") as f:
            try:
                exp, gene = f["geneExp/bin1/expression"], f["geneExp/bin1/gene"]
            except KeyError as e:
                raise InputError(
                    f"{path}: not a bin1 GEF (expected datasets geneExp/bin1/expression "
                    f"and geneExp/bin1/gene; {e})"
                ) from e
            g = gene[:]
            name = "geneName" if "geneName" in g.dtype.names else "gene"
            for col, fields in (
                (name, g.dtype.names),
                ("offset", g.dtype.names),
                ("x", exp.dtype.names),
                ("y", exp.dtype.names),
                ("count", exp.dtype.names),
            ):
                if col not in fields:
                    raise InputError(f"{path}: GEF field {col!r} missing (has {fields})")
            names = np.char.decode(g[name].astype("S"), "utf-8", "replace")
            order = np.lexsort(
                (g["count"] > 0, g["offset"])
            )  # empty genes first at a shared offset
            starts = g["offset"][order].astype(np.int64)
            for s in range(0, exp.shape[0], rows):
                rec = exp[s : s + rows]
                stats["records"] += len(rec)
                gi = order[np.searchsorted(starts, np.arange(s, s + len(rec)), side="right") - 1]
                yield _expand(rec["x"], rec["y"], names[gi], rec["count"], pitch)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable or truncated GEF file ({e})") from e


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    if fs.isdir(path):
        files = sorted(p for p in fs.ls(path, detail=False) if is_gem(p) or is_gef(p))
        if not files:
            raise InputError(f"{input_url}: no *.gem, *.gem.gz or *.gef file")
        path = files[0]
    pitch = float(options["pixel_size_um"])
    stats = {"records": 0}
    read = _gef_batches if is_gef(path) else _gem_batches

    def batches():
        stats["records"] = 0
        yield from read(fs, path, pitch, int(options["batch_rows"]), stats)

    image = grid = None
    if options["image"]:
        image, shape, _ = image_ref(options["image"], options["image"], 0, pitch, so)
        grid = (tuple(float(v) * pitch for v in options["image_origin_dnb"]), shape)
    rep = write_chip(
        batches,
        out_url,
        pitch,
        "stereoseq",
        source=input_url,
        image=image,
        grid=grid,
        overwrite=overwrite,
        storage_options=so,
        meta_extra={"counts": "expanded", "format": "gef" if is_gef(path) else "gem"},
    )
    rep["dropped"] = {}
    rep["n_records"] = stats["records"]
    return rep

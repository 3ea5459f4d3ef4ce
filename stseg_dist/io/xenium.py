"""10x Xenium bundle -> canonical chip (streaming; DAPI referenced lazily, never copied).

Transcripts from ``transcripts.parquet`` (or the older ``transcripts.csv.gz``/``.csv``), filtered by
``qv >= min_qv`` (default 20) and control-probe prefixes, with dropped counts per reason. The pixel
size comes from ``experiment.xenium`` (default 0.2125 µm). The image is ``morphology_focus.ome.tif``,
``morphology_focus/`` (first file) or ``morphology_mip.ome.tif`` as a lazy TIFF reference; without
one a transcript-density image is rendered (see :mod:`stseg_dist.io.generic`). Vendor nuclei from
``nucleus_boundaries.parquet``/``.csv.gz``/``.csv`` are rasterised into ``nuclei.zarr``; their label
is also written per transcript as ``vendor_nucleus_label`` so alignment can be checked.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import constants as K
from ..errors import InputError
from . import storage
from .generic import iter_table, polygons_from_vertex_table, require_columns, write_chip

DEFAULT_PIXEL_SIZE_UM = 0.2125
CONTROL_PREFIXES = ("NegControlProbe_", "NegControlCodeword_", "antisense_", "BLANK_", "Unassigned",
                    "DeprecatedCodeword_", "UnassignedCodeword_")
TX_FILES = ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv")
REQUIRED = ("feature_name", "x_location", "y_location")
IMAGES = ("morphology_focus.ome.tif", "morphology_focus/morphology_focus_0000.ome.tif", "morphology_mip.ome.tif")
NUCLEI = ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv")


def is_bundle(fs, path: str) -> bool:
    return any(fs.exists(storage.join(path, f)) for f in TX_FILES + ("experiment.xenium",))


def _first(fs, path, names):
    for n in names:
        p = storage.join(path, n)
        if fs.exists(p):
            return p
    return None


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    tx = _first(fs, path, TX_FILES)
    if tx is None:
        raise InputError(f"{input_url}: Xenium bundle has none of {TX_FILES}")
    ps = float(options.get("pixel_size_um", 0) or 0)
    exp = storage.join(path, "experiment.xenium")
    if not ps and fs.exists(exp):
        try:
            with fs.open(exp, "r") as fh:
                ps = float(json.load(fh)["pixel_size"])
        except (ValueError, KeyError) as e:
            raise InputError(f"{exp}: expected JSON with a numeric 'pixel_size' ({e})") from e
    ps = ps or DEFAULT_PIXEL_SIZE_UM
    min_qv = float(options.get("min_qv", 20))
    prefixes = tuple(options.get("control_prefixes", CONTROL_PREFIXES))

    lut = None
    polys = None
    nuc = _first(fs, path, NUCLEI) if options.get("vendor_nuclei", True) else None
    if nuc is not None:
        with fs.open(nuc, "rb", compression="gzip" if nuc.endswith(".gz") else None) as fh:
            df = pd.read_parquet(fh) if nuc.endswith(".parquet") else pd.read_csv(fh)
        polys, lut = polygons_from_vertex_table(df, "cell_id", "vertex_x", "vertex_y", nuc)

    dropped = {"low_qv": 0, "control_probe": 0}

    def batches():
        for k in dropped:
            dropped[k] = 0
        for t in iter_table(fs, tx, input_url):
            require_columns(t.column_names, REQUIRED, tx)
            gene = pc.cast(t["feature_name"], pa.string())
            ctrl = np.zeros(t.num_rows, bool)
            for p in prefixes:
                ctrl |= pc.starts_with(gene, p).to_numpy(zero_copy_only=False)
            keep = ~ctrl
            dropped["control_probe"] += int(ctrl.sum())
            if "qv" in t.column_names:
                low = pc.less(pc.cast(t["qv"], pa.float64()), min_qv).to_numpy(zero_copy_only=False) & keep
                dropped["low_qv"] += int(low.sum())
                keep &= ~low
            t = t.filter(pa.array(keep))
            cols = {K.X: pc.cast(t["x_location"], pa.float64()), K.Y: pc.cast(t["y_location"], pa.float64()),
                    K.GENE: pc.cast(t["feature_name"], pa.string())}
            for src, dst, typ in (("z_location", K.Z, pa.float32()), ("qv", K.QV, pa.float32()),
                                  ("transcript_id", K.TRANSCRIPT_ID, pa.uint64()),
                                  ("cell_id", "vendor_cell_id", pa.string()),
                                  ("overlaps_nucleus", "overlaps_nucleus", pa.uint8())):
                if src in t.column_names:
                    cols[dst] = pc.cast(t[src], typ)
            if lut is not None and "cell_id" in t.column_names:
                ids = pc.cast(t["cell_id"], pa.string()).to_pandas()
                cols["vendor_nucleus_label"] = pa.array(ids.map(lut).fillna(0).astype(np.uint32).to_numpy())
            yield pa.table(cols)

    img = _first(fs, path, IMAGES)
    image = shape = None
    if img is not None:
        import tifffile

        level = int(options.get("level", 0))
        with fs.open(img, "rb") as fh:
            try:
                s = tifffile.TiffFile(fh).series[0]
                lv = s.levels[level]
            except (tifffile.TiffFileError, IndexError) as e:
                raise InputError(f"{img}: unreadable OME-TIFF or no pyramid level {level} ({e})") from e
            shape = tuple(lv.shape[-2:])
        ps = ps * (s.shape[-1] / shape[1])
        image = {"path": img if not storage.is_remote(input_url) else input_url.rstrip("/") + img[len(path):],
                 "format": "tiff", "series": 0, "level": level}
    rep = write_chip(batches, out_url, ps, "xenium", source=input_url, image=image, grid=None if shape is None else ((0.0, 0.0), shape),
                     nuclei=polys, overwrite=overwrite, storage_options=so,
                     meta_extra={"source": input_url if not storage.is_remote(input_url) else "remote"})
    rep["dropped"] = dict(dropped)
    rep["n_vendor_nuclei"] = len(polys) if polys else 0
    return rep

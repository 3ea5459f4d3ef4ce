"""10x Xenium bundle -> canonical chip (streaming; DAPI referenced lazily, never copied).

Transcripts from ``transcripts.parquet`` (or the older ``transcripts.csv.gz``/``.csv``), filtered by
``qv >= min_qv`` and control-probe prefixes, with dropped counts per reason. The pixel size comes
from ``experiment.xenium`` (0.2125 µm when absent). The image is ``morphology_focus.ome.tif``,
``morphology_focus/`` (v2+: one file per channel, DAPI in ``*_0000``/``ch0000_*``) or
``morphology_mip.ome.tif``, a lazy reference at pyramid ``level``; without one a transcript-density
image is rendered (see :mod:`stseg_dist.io.generic`).

Vendor segmentation: the ``cells.zarr.zip`` raster masks when present (``masks/0`` nuclei ->
``nuclei.zarr``, ``masks/1`` cells -> ``vendor_cells.zarr``; exact, on the morphology grid), else
``nucleus_boundaries.parquet``/``.csv[.gz]`` vertex tables rasterised, else nuclei rebuilt from
the per-transcript ``overlaps_nucleus`` flags of each vendor ``cell_id`` (see
:mod:`stseg_dist.io.flag_nuclei`; ``vendor_nuclei="flags"`` rebuilds them even where polygons or
masks exist, e.g. to measure them). The label under each
transcript's vendor cell is written per transcript (``vendor_nucleus_label`` from boundaries,
``vendor_cell_label`` from masks) so alignment can be checked.
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
from .flag_nuclei import OPTIONS as FLAG_OPTIONS
from .flag_nuclei import FlagNuclei
from .generic import (
    canonical,
    drop_prefixes,
    image_ref,
    iter_table,
    polygons_from_vertex_table,
    read_vertex_table,
    require_columns,
    write_chip,
)
from .options import Option, options_doc

DEFAULT_PIXEL_SIZE_UM = 0.2125
CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "antisense_",
    "BLANK_",
    "Unassigned",
    "DeprecatedCodeword_",
    "UnassignedCodeword_",
    "GenomicControl",
)
TX_FILES = ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv")
REQUIRED = ("feature_name", "x_location", "y_location")
IMAGES = (
    "morphology_focus.ome.tif",
    "morphology_focus/morphology_focus_0000.ome.tif",
    "morphology_focus/ch0000_dapi.ome.tif",
    "morphology_mip.ome.tif",
)
NUCLEI = ("nucleus_boundaries.parquet", "nucleus_boundaries.csv.gz", "nucleus_boundaries.csv")
CELLS_ZARR = "cells.zarr.zip"
VENDOR_CELLS = "vendor_cells.zarr"
EXTRAS = (
    ("z_location", K.Z, pa.float32()),
    ("qv", K.QV, pa.float32()),
    ("transcript_id", K.TRANSCRIPT_ID, pa.uint64()),
    ("cell_id", "vendor_cell_id", pa.string()),
    ("overlaps_nucleus", "overlaps_nucleus", pa.uint8()),
)

OPTIONS = (
    Option("pixel_size_um", None, "µm per level-0 pixel (default: experiment.xenium, else 0.2125)"),
    Option("min_qv", 20, "drop transcripts with qv below this"),
    Option("control_prefixes", list(CONTROL_PREFIXES), "drop genes starting with any of these"),
    Option("level", 0, "pyramid level of the morphology image to segment"),
    Option("image", True, "use the morphology image (false: transcript-density image)"),
    Option(
        "vendor_nuclei",
        True,
        "read vendor nuclei: true (cells.zarr.zip masks, else nucleus_boundaries, else rebuilt "
        'from overlaps_nucleus per cell_id), "flags" (always rebuilt from the flags), false (none)',
    ),
    *FLAG_OPTIONS,
)
__doc__ += "\n" + options_doc(OPTIONS)


def is_bundle(fs, path: str) -> bool:
    return any(fs.exists(storage.join(path, f)) for f in TX_FILES + ("experiment.xenium",))


FEATURE_FILES = ("cell_feature_matrix/features.tsv.gz", "features.tsv.gz", "features.tsv")


def write_features(fs, url: str, chip_url: str, so) -> int:
    """The bundle's feature list (10x ``features.tsv.gz``: gene ID, name, feature type; control
    probes included) as the chip's ``features.parquet``, for the run's AnnData ``var``.
    """
    import gzip
    import io

    try:
        with fs.open(url, "rb") as fh:
            raw = fh.read()
        text = gzip.decompress(raw) if url.endswith(".gz") else raw
        table = pd.read_csv(io.BytesIO(text), sep="\t", header=None, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{url}: not a 10x features table (id, name, type): {exc}") from exc
    if table.shape[1] < 3:
        raise InputError(f"{url}: expected 3 tab-separated columns (id, name, type)")
    out = pd.DataFrame(
        {"gene": table[1], "gene_id": table[0], "feature_type": table[2]}
    ).drop_duplicates("gene")
    fs_out, path = storage.fs_and_path(storage.join(chip_url, K.FEATURES_PARQUET), so)
    with fs_out.open(path, "wb") as fh:
        out.to_parquet(fh, index=False)
    return len(out)


def _first(fs, path, names):
    for n in names:
        p = storage.join(path, n)
        if fs.exists(p):
            return p
    return None


def _pixel_size(fs, path, options) -> float:
    if options["pixel_size_um"]:
        return float(options["pixel_size_um"])
    exp = storage.join(path, "experiment.xenium")
    if not fs.exists(exp):
        return DEFAULT_PIXEL_SIZE_UM
    try:
        with fs.open(exp, "r") as fh:
            return float(json.load(fh)["pixel_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{exp}: expected JSON with a numeric 'pixel_size' ({e})") from e


def cell_id_to_int(ids: pd.Series) -> np.ndarray:
    """Xenium cell IDs ``"ffkpbaba-1"`` -> the uint32 prefix stored in cells.zarr.zip
    (letters a..p = hex).

    Vectorised (8 letters -> 8 nibbles); IDs that are not of that form (``UNASSIGNED``) give 0.
    """
    head = ids.astype(str).str.split("-", n=1).str[0]
    ok = head.str.fullmatch(r"[a-p]{1,8}").to_numpy(bool)
    head = head.where(ok, "a").str.rjust(8, "a")
    b = np.frombuffer(np.array(head, dtype="S8").tobytes(), np.uint8).reshape(-1, 8).astype(
        np.int64
    ) - ord("a")
    return np.where(ok, (b << (4 * np.arange(7, -1, -1))).sum(axis=1), 0)


def _masks(fs, path, source):
    """(nuclei, cells, {cell prefix -> label}) from cells.zarr.zip, or None when absent.

    Label L of ``masks/1`` is row L-1 of ``cell_id`` (whose first column is the ID prefix).
    """
    p = storage.join(path, CELLS_ZARR)
    if not fs.exists(p):
        return None
    import zarr

    try:
        if storage.is_remote(source):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
            from fsspec.implementations.zip import ZipFileSystem

            zfs = AsyncFileSystemWrapper(ZipFileSystem(fs.open(p, "rb")), asynchronous=True)
            store = zarr.storage.FsspecStore(zfs, path="", read_only=True)
        else:
            store = zarr.storage.ZipStore(p, mode="r")
        root = zarr.open_group(store, mode="r")
        nuc, cells = root["masks"]["0"], root["masks"]["1"]
        ids = np.asarray(root["cell_id"][:])
    except Exception as e:  # any malformed zip or missing array
        raise InputError(
            f"{p}: expected a zipped zarr store with masks/0 (nuclei), masks/1 (cells) "
            f"and cell_id ({e})"
        ) from e
    prefix = ids[:, 0] if ids.ndim == 2 else ids
    lut = pd.Series(np.arange(1, len(prefix) + 1, dtype=np.int64), index=prefix.astype(np.int64))
    return nuc, cells, lut


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    tx = _first(fs, path, TX_FILES)
    if tx is None:
        raise InputError(f"{input_url}: Xenium bundle has none of {TX_FILES}")
    ps = _pixel_size(fs, path, options)
    mode = options["vendor_nuclei"]
    if mode not in (True, False, "flags"):
        raise InputError(
            f'reader option vendor_nuclei must be true, false or "flags", got {mode!r}'
        )
    masks = _masks(fs, path, input_url) if mode is True else None
    polys = lut = flags = None
    nuc = _first(fs, path, NUCLEI) if mode is True and masks is None else None
    if nuc is not None:
        polys, lut = _boundaries(fs, nuc)
    first = next(iter(iter_table(fs, tx, input_url, 1000)), None)  # None: an empty table
    columns = set(first.column_names) if first is not None else set()
    if (mode == "flags" or (mode is True and masks is None and nuc is None)) and {
        "cell_id",
        "overlaps_nucleus",
    } <= columns:
        grow = options["flag_nuclei_grow_um"]
        flags = FlagNuclei(options["flag_nuclei_min_transcripts"], ps if grow is None else grow)
    dropped = {"low_qv": 0, "control_probe": 0}

    def batches():
        dropped.update(low_qv=0, control_probe=0)
        if flags is not None:
            flags.reset()
        for t in iter_table(fs, tx, input_url, options["batch_rows"]):
            yield _canonical_batch(t, tx, options, dropped, masks, lut, flags)

    img = _first(fs, path, IMAGES) if options["image"] else None
    image = grid = None
    if img is not None:
        ref = storage.url_for(input_url, path, img)
        image, shape, ps = image_ref(ref, ref, int(options["level"]), ps, so)
        grid = ((0.0, 0.0), shape)
    arrays = {}
    if masks is not None:
        if grid is None:
            grid = ((0.0, 0.0), tuple(masks[0].shape[-2:]))
        if tuple(masks[0].shape[-2:]) != tuple(grid[1]):
            raise InputError(
                f"{storage.join(path, CELLS_ZARR)}: masks are {tuple(masks[0].shape)} px but the "
                f"image grid is {tuple(grid[1])} px (use level=0 with vendor masks)"
            )
        arrays = {K.NUCLEI_ZARR: _rows(masks[0]), VENDOR_CELLS: _rows(masks[1])}
    rep = write_chip(
        batches,
        out_url,
        ps,
        "xenium",
        source=input_url,
        image=image,
        grid=grid,
        polygons={K.NUCLEI_ZARR: polys or flags} if polys or flags is not None else None,
        arrays=arrays,
        overwrite=overwrite,
        storage_options=so,
        meta_extra={"source": input_url if not storage.is_remote(input_url) else "remote"},
    )
    rep["dropped"] = dict(dropped)
    feats = _first(fs, path, FEATURE_FILES)
    if feats is not None:
        rep["n_features"] = write_features(fs, feats, out_url, so)
    rep["n_vendor_nuclei"] = (
        len(polys)
        if polys
        else len(masks[2])
        if masks is not None
        else len(flags)
        if flags is not None
        else 0
    )
    rep["vendor_segmentation"] = (
        "cells.zarr.zip"
        if masks is not None
        else "boundaries"
        if polys
        else "transcript_flags"
        if flags is not None
        else None
    )
    return rep


def _canonical_batch(t, tx, options, dropped, masks, lut, flags=None):
    """Filter one batch (control probes, then qv; a missing qv counts as low) and map its
    columns.
    """
    require_columns(t.column_names, REQUIRED, tx)
    t, n_ctrl = drop_prefixes(t, "feature_name", tuple(options["control_prefixes"]))
    dropped["control_probe"] += n_ctrl
    if "qv" in t.column_names:
        low = pc.fill_null(pc.less(pc.cast(t["qv"], pa.float64()), float(options["min_qv"])), True)
        dropped["low_qv"] += int(pc.sum(low).as_py() or 0)
        t = t.filter(pc.invert(low))
    out = canonical(t, "x_location", "y_location", "feature_name", EXTRAS)
    if flags is not None:
        flags.add(
            t["cell_id"].to_numpy(zero_copy_only=False),
            out[K.X].to_numpy(),
            out[K.Y].to_numpy(),
            pc.fill_null(t["overlaps_nucleus"], 0).to_numpy(zero_copy_only=False).astype(bool),
        )
    if "cell_id" not in t.column_names or (lut is None and masks is None):
        return out
    ids = pc.cast(t["cell_id"], pa.string()).to_pandas()
    if masks is not None:
        lab = masks[2].reindex(cell_id_to_int(ids)).fillna(0).to_numpy()
        return out.append_column("vendor_cell_label", pa.array(lab.astype(np.uint32)))
    return out.append_column(
        "vendor_nucleus_label", pa.array(ids.map(lut).fillna(0).to_numpy().astype(np.uint32))
    )


def _rows(arr):
    return lambda r0, r1, w: np.asarray(arr[r0:r1, :w]).astype(np.uint32)


def _boundaries(fs, nuc):
    return polygons_from_vertex_table(
        read_vertex_table(fs, nuc), "cell_id", "vertex_x", "vertex_y", nuc
    )

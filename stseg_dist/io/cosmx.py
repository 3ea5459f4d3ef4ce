"""NanoString CosMx bundle -> canonical chip, fields of view stitched by global pixel position.

Chip µm are ``x = x_global_px * ps`` and ``y = -y_global_px * ps``: CosMx global y grows upwards
while image rows grow downwards, so negating y makes rows and chip y agree. A fov image pixel
(r, c) sits at global px (fov_x + x_off + c, fov_y + y_top - r) where y_top is the image height for
full fovs (``image_offset_px`` {"x", "y_top"} for crops such as the shared one). Images are
``CellComposite/CellComposite_F###.jpg`` (blue channel = DAPI) or ``Morphology2D/*F###*.TIF``
(channel 0 = DAPI... first plane); ``CellLabels/CellLabels_F###.tif`` become ``vendor_cells.zarr``
with global label ``fov * 100000 + cell_ID``, also written per transcript as ``vendor_cell_label``.
NegPrb*, SystemControl* and FalseCode* targets are dropped. Default pixel size 0.12028 µm.
Vendor nuclei (``nuclei.zarr``) are rebuilt from each cell's ``CellComp == "Nuclear"`` transcripts
(see :mod:`stseg_dist.io.flag_nuclei`) when the table has ``cell_ID`` and ``CellComp``.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import constants as K
from ..errors import InputError
from . import storage
from .flag_nuclei import OPTIONS as FLAG_OPTIONS
from .flag_nuclei import FlagNuclei
from .generic import canonical, drop_prefixes, iter_table, require_columns, write_chip
from .options import Option, options_doc

DEFAULT_PIXEL_SIZE_UM = 0.12028
CONTROL_PREFIXES = ("NegPrb", "SystemControl", "FalseCode", "Negative")
LABEL_STRIDE = 100000
VENDOR_CELLS = "vendor_cells.zarr"
EXTRAS = (
    ("fov", "fov", pa.int32()),
    ("z", K.Z, pa.float32()),
    ("CellComp", "CellComp", pa.string()),
)

OPTIONS = (
    Option("pixel_size_um", DEFAULT_PIXEL_SIZE_UM, "µm per global/local pixel"),
    Option(
        "image_offset_px",
        {},
        'crop offset {"x": local px of image column 0, "y_top": local px of row 0}',
    ),
    Option("control_prefixes", list(CONTROL_PREFIXES), "drop targets starting with any of these"),
    Option(
        "vendor_nuclei",
        True,
        'rebuild vendor nuclei from each cell_ID\'s CellComp == "Nuclear" transcripts (false: '
        "none)",
    ),
    *FLAG_OPTIONS,
)
__doc__ += "\n" + options_doc(OPTIONS)


def _find(fs, path, suffixes):
    return sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffixes))


def is_bundle(fs, path: str) -> bool:
    return bool(_find(fs, path, ("_tx_file.csv", "_tx_file.csv.gz")))


def _fov_file(fs, path, sub, fov):
    d = storage.join(path, sub)
    if not fs.exists(d):
        return None
    pat = re.compile(rf"F0*{fov}\.(jpg|jpeg|tif|tiff|png)$", re.I)
    hits = [p for p in fs.ls(d, detail=False) if pat.search(p)]
    return sorted(hits)[0] if hits else None


def _read_image(fs, p, dapi=True):
    from skimage.io import imread

    try:
        with fs.open(p, "rb") as fh:
            a = imread(fh)
    except Exception as e:  # unreadable image of any kind
        raise InputError(f"{p}: unreadable image ({e})") from e
    if a.ndim == 3 and dapi:
        a = a[..., 2] if a.shape[-1] in (3, 4) else a[0]  # RGB composite: blue; stack: first plane
    return a


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    txs = _find(fs, path, ("_tx_file.csv", "_tx_file.csv.gz"))
    if not txs:
        raise InputError(f"{input_url}: no *_tx_file.csv in the CosMx bundle")
    tx = txs[0]
    ps = float(options["pixel_size_um"])
    prefixes = tuple(options["control_prefixes"])
    dropped = {"control_probe": 0}
    flags = None
    if options["vendor_nuclei"] not in (True, False):
        raise InputError(
            f"reader option vendor_nuclei must be true or false, got {options['vendor_nuclei']!r}"
        )
    if options["vendor_nuclei"] and {"cell_ID", "CellComp", "fov"} <= set(
        next(iter(iter_table(fs, tx, input_url, 1000))).column_names
    ):
        grow = options["flag_nuclei_grow_um"]
        flags = FlagNuclei(options["flag_nuclei_min_transcripts"], ps if grow is None else grow)

    def batches():
        dropped["control_probe"] = 0
        if flags is not None:
            flags.reset()
        for t in iter_table(fs, tx, input_url, options["batch_rows"]):
            require_columns(t.column_names, ("fov", "x_global_px", "y_global_px", "target"), tx)
            t, n = drop_prefixes(t, "target", prefixes)
            dropped["control_probe"] += n
            out = canonical(t, "x_global_px", "y_global_px", "target", EXTRAS, scale=(ps, -ps))
            if "cell_ID" in t.column_names:
                cid = pc.cast(t["cell_ID"], pa.int64()).to_numpy(zero_copy_only=False)
                fov = pc.cast(t["fov"], pa.int64()).to_numpy(zero_copy_only=False)
                label = np.where(cid > 0, fov * LABEL_STRIDE + cid, 0).astype(np.uint32)
                out = out.append_column("vendor_cell_id", pa.array(cid)).append_column(
                    "vendor_cell_label", pa.array(label)
                )
                if flags is not None:
                    comp = pc.cast(t["CellComp"], pa.string()).to_numpy(zero_copy_only=False)
                    flags.add(label, out[K.X].to_numpy(), out[K.Y].to_numpy(), comp == "Nuclear")
            yield out

    pos_files = _find(fs, path, ("_fov_positions_file.csv", "_fov_positions_file.csv.gz"))
    grid = paint = None
    arrays = {}
    placed = []
    if pos_files:
        with fs.open(
            pos_files[0], "rb", compression="gzip" if pos_files[0].endswith(".gz") else None
        ) as fh:
            pos = pd.read_csv(fh)
        pos.columns = [c.lower() for c in pos.columns]
        xcol = "x_global_px" if "x_global_px" in pos.columns else "x_global_mm"
        require_columns(pos.columns, ("fov", xcol, xcol.replace("x_", "y_")), pos_files[0])
        off = options["image_offset_px"]
        for fov, fx, fy in zip(pos["fov"], pos[xcol], pos[xcol.replace("x_", "y_")], strict=True):
            if xcol.endswith("_mm"):
                fx, fy = fx * 1000 / ps, fy * 1000 / ps
            img = _fov_file(fs, path, "CellComposite", fov) or _fov_file(
                fs, path, "Morphology2D", fov
            )
            if img is None:
                continue
            lab = _fov_file(fs, path, "CellLabels", fov)
            h, w = _read_image(fs, img).shape[:2]
            x0 = fx + off.get("x", 0)
            ytop = fy + off.get("y_top", h)
            placed.append((int(fov), img, lab, (x0 * ps, -ytop * ps), (h, w)))
    if placed:
        ox = min(p[3][0] for p in placed)
        oy = min(p[3][1] for p in placed)
        H = max(int(round((p[3][1] - oy) / ps)) + p[4][0] for p in placed)
        W = max(int(round((p[3][0] - ox) / ps)) + p[4][1] for p in placed)
        grid = ((ox, oy), (H, W))
        load = functools.lru_cache(maxsize=4)(lambda p, dapi: _read_image(fs, p, dapi))

        def painter(kind):
            def paint(r0, r1, ww):
                out = np.zeros((r1 - r0, ww), np.uint32 if kind == "labels" else np.uint16)
                for fov, img, lab, (x_um, y_um), (h, w) in placed:
                    pr, pcol = int(round((y_um - oy) / ps)), int(round((x_um - ox) / ps))
                    a0, a1 = max(r0, pr), min(r1, pr + h)
                    if a0 >= a1:
                        continue
                    if kind == "labels":
                        if lab is None:
                            continue
                        src = load(lab, False).astype(np.int64)
                        src = np.where(src > 0, fov * LABEL_STRIDE + src, 0).astype(np.uint32)
                    else:
                        src = load(img, True)
                    out[a0 - r0 : a1 - r0, pcol : pcol + w] = src[a0 - pr : a1 - pr]
                return out

            return paint

        paint = painter("image")
        if any(p[2] for p in placed):
            arrays[VENDOR_CELLS] = painter("labels")
    rep = write_chip(
        batches,
        out_url,
        ps,
        "cosmx",
        source=input_url,
        grid=grid,
        paint_image=paint,
        polygons={K.NUCLEI_ZARR: flags} if flags is not None else None,
        arrays=arrays,
        meta_extra={"y_axis": "negated global y", "label_stride": LABEL_STRIDE},
        overwrite=overwrite,
        storage_options=so,
    )
    rep["dropped"] = dict(dropped)
    rep["n_fovs_with_image"] = len(placed)
    rep["n_vendor_nuclei"] = len(flags) if flags is not None else 0
    rep["vendor_segmentation"] = "transcript_flags" if flags is not None else None
    return rep

"""Vizgen MERSCOPE bundle -> canonical chip.

Transcripts from ``detected_transcripts.csv[.gz]`` (global_x, global_y µm, gene; Blank-* dropped).
The DAPI mosaic ``images/mosaic_DAPI_z{k}.tif`` is placed by
``micron_to_mosaic_pixel_transform.csv``
(scale + translation; rotation is refused). One chosen plane is referenced lazily; a projection
(``z_plane="max"``, the default when several planes exist) is written band by band into image.zarr.
Exports without the transform (e.g. the Giotto mini dataset JPEGs) pass ``image_bounds_um``
[x0, y0, x1, y1]. Vendor cell polygons (``cell_boundaries.parquet`` WKB, the per-fov
``cell_boundaries/feature_data_*.hdf5`` of older exports, or x/y/poly_ID CSV with negative y) are
rasterised into ``vendor_cells.zarr``; without images the grid is the transcripts' own.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import constants as K
from ..errors import InputError
from . import storage
from .generic import canonical, drop_prefixes, iter_table, require_columns, write_chip
from .options import Option, options_doc

TX_NAMES = ("detected_transcripts.csv", "detected_transcripts.csv.gz")
VENDOR_CELLS = "vendor_cells.zarr"
DEFAULT_PIXEL_SIZE_UM = 0.108
EXTRAS = (
    ("global_z", K.Z, pa.float32()),
    ("transcript_id", K.TRANSCRIPT_ID, pa.string()),
    ("cell_id", "vendor_cell_id", pa.string()),
    ("fov", "fov", pa.int32()),
)

OPTIONS = (
    Option("z_plane", "max", "DAPI plane k of images/*DAPI_z{k}.*, or 'max' for a max projection"),
    Option(
        "image_bounds_um",
        None,
        "[x0, y0, x1, y1] µm of the mosaic, for exports without the transform CSV",
    ),
    Option("micron_to_pixel", None, "3x3 µm -> mosaic pixel affine, instead of the transform CSV"),
    Option(
        "pixel_size_um", None, "µm per pixel of the density grid when there are no images (0.108)"
    ),
    Option("control_prefixes", ["Blank-"], "drop genes starting with any of these"),
    Option("vendor_cells", True, "rasterise vendor cell polygons into vendor_cells.zarr"),
    Option(
        "image_downsample",
        1,
        "keep every k-th mosaic pixel (k x coarser grid; the image is then copied)",
    ),
)
__doc__ += "\n" + options_doc(OPTIONS)


def _tx_file(fs, path):
    for n in TX_NAMES:
        if fs.exists(storage.join(path, n)):
            return storage.join(path, n)
    cands = sorted(
        p
        for p in fs.ls(path, detail=False)
        if "transcripts" in p.rsplit("/", 1)[-1] and p.endswith((".csv", ".gz"))
    )
    return cands[0] if cands else None


def is_bundle(fs, path: str) -> bool:
    if any(fs.exists(storage.join(path, n)) for n in TX_NAMES):
        return True
    tx = _tx_file(fs, path)
    if tx is None:
        return False
    with fs.open(tx, "rb", compression="gzip" if tx.endswith(".gz") else None) as fh:
        head = fh.readline().decode(errors="replace")
    return "global_x" in head and "gene" in head


def _planes(fs, path, options):
    """List (z, path) of DAPI images, mosaic TIFFs first."""
    img_dir = storage.join(path, "images")
    if not fs.exists(img_dir):
        return []
    out = []
    for p in sorted(fs.ls(img_dir, detail=False)):
        name = p.rsplit("/", 1)[-1]
        m = re.search(r"dapi_z(\d+)\.(tif|tiff|jpg|jpeg|png)$", name, re.I)
        if m:
            out.append((int(m.group(1)), p))
    return out


def _transform(fs, path, options, source):
    if options["image_bounds_um"] is not None:
        return None
    if options["micron_to_pixel"] is not None:
        return np.asarray(options["micron_to_pixel"], float)
    tp = storage.join(path, "images", "micron_to_mosaic_pixel_transform.csv")
    if not fs.exists(tp):
        raise InputError(
            f"{source}: images/micron_to_mosaic_pixel_transform.csv is missing (or pass "
            "options image_bounds_um=[x0,y0,x1,y1] or micron_to_pixel)"
        )
    with fs.open(tp, "r") as fh:
        try:
            m = np.loadtxt(fh, dtype=float)
        except ValueError as e:
            raise InputError(f"{tp}: expected a 3x3 whitespace-separated matrix ({e})") from e
    if m.shape != (3, 3):
        raise InputError(f"{tp}: expected a 3x3 matrix, got shape {m.shape}")
    return m


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    tx = _tx_file(fs, path)
    if tx is None:
        raise InputError(f"{input_url}: no detected_transcripts.csv in the MERSCOPE bundle")
    polys = _vendor_cells(fs, path, options)
    lut = {str(cid): label for label, _, _, cid in polys}
    polys = [p[:3] for p in polys]
    dropped = {"blank_probe": 0}
    prefixes = tuple(options["control_prefixes"])

    def batches():
        dropped["blank_probe"] = 0
        for t in iter_table(fs, tx, input_url, options["batch_rows"]):
            require_columns(t.column_names, ("global_x", "global_y", "gene"), tx)
            t, n = drop_prefixes(t, "gene", prefixes)
            dropped["blank_probe"] += n
            out = canonical(t, "global_x", "global_y", "gene", EXTRAS)
            if lut and "cell_id" in t.column_names:
                ids = pc.cast(t["cell_id"], pa.string()).to_pandas()
                out = out.append_column(
                    "vendor_cell_label", pa.array(ids.map(lut).fillna(0).to_numpy(np.uint32))
                )
            yield out

    planes = _planes(fs, path, options)
    z_sel = options["z_plane"]
    if z_sel != "max":
        planes = [(z, p) for z, p in planes if z == int(z_sel)]
        if not planes:
            raise InputError(f"{input_url}: no images/*DAPI_z{z_sel}.* image for z_plane={z_sel}")
    image = grid = paint = None
    ps = options["pixel_size_um"] or DEFAULT_PIXEL_SIZE_UM
    if planes:
        image, grid, paint, ps = _mosaic(fs, path, planes, options, input_url)
    rep = write_chip(
        batches,
        out_url,
        ps,
        "merscope",
        source=input_url,
        grid=grid,
        image=image,
        paint_image=paint,
        polygons={VENDOR_CELLS: polys} if polys else None,
        meta_extra={"z_plane": z_sel, "dapi_planes": [z for z, _ in planes]},
        overwrite=overwrite,
        storage_options=so,
    )
    rep["dropped"] = dict(dropped)
    rep["n_vendor_cells"] = len(polys)
    return rep


def _open_plane(fs, p):
    """A lazy zarr view of a TIFF mosaic plane; other formats (JPEG exports) are decoded whole."""
    try:
        if p.lower().endswith((".tif", ".tiff")):
            import tifffile
            import zarr

            return zarr.open(tifffile.imread(fs.open(p, "rb"), aszarr=True), mode="r")
        from skimage.io import imread

        with fs.open(p, "rb") as fh:
            a = imread(fh)
        return a if a.ndim == 2 else a[..., 0]
    except Exception as e:  # unreadable image of any kind
        raise InputError(f"{p}: unreadable image ({e})") from e


def _mosaic(fs, path, planes, options, input_url):
    """(lazy image ref or None, grid, band painter or None, pixel size) of the DAPI planes.

    One TIFF plane at full resolution is referenced in place; a projection, a JPEG or a
    downsampled grid is painted band by band into image.zarr.
    """
    arrays = [_open_plane(fs, p) for _, p in planes]
    shapes = {tuple(a.shape[-2:]) for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"{input_url}: DAPI planes differ in shape {sorted(shapes)}")
    h, w = shapes.pop()
    m = _transform(fs, path, options, input_url)
    if m is None:
        x0, y0, x1, y1 = map(float, options["image_bounds_um"])
        sc = (w / (x1 - x0) + h / (y1 - y0)) / 2
        m = np.array([[sc, 0, -sc * x0], [0, sc, -sc * y0], [0, 0, 1]])
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9 or not np.isclose(m[0, 0], m[1, 1], rtol=1e-3):
        raise InputError(
            f"{input_url}: micron-to-pixel transform has rotation or anisotropic scale {m.tolist()}"
        )
    k = int(options["image_downsample"])
    grid = ((-m[0, 2] / m[0, 0], -m[1, 2] / m[0, 0]), (h // k, w // k))
    if k == 1 and len(planes) == 1 and planes[0][1].lower().endswith((".tif", ".tiff")):
        ref = {
            "path": storage.url_for(input_url, path, planes[0][1]),
            "format": "tiff",
            "series": 0,
            "level": 0,
        }
        return ref, grid, None, k / m[0, 0]

    def paint(r0, r1, ww):
        return np.max(
            [np.asarray(a[r0 * k : r1 * k : k, : ww * k : k]) for a in arrays], axis=0
        ).astype(np.uint16)

    return None, grid, paint, k / m[0, 0]


def _vendor_cells(fs, path, options):
    """Vendor cell polygons (label, x µm, y µm, vendor ID) from cell_boundaries.parquet, hdf5 or
    CSVs.
    """
    if not options["vendor_cells"]:
        return []
    pq_path = storage.join(path, "cell_boundaries.parquet")
    polys = []
    if fs.exists(pq_path):
        import shapely

        with fs.open(pq_path, "rb") as fh:
            df = pd.read_parquet(fh)
        require_columns(df.columns, ("EntityID", "Geometry"), pq_path)
        if "ZIndex" in df.columns:
            df = df[df.ZIndex == df.ZIndex.min()]
        for i, (eid, geom) in enumerate(zip(df.EntityID, df.Geometry, strict=True), start=1):
            g = shapely.from_wkb(geom)
            g = max(g.geoms, key=lambda q: q.area) if hasattr(g, "geoms") else g
            xs, ys = np.asarray(g.exterior.coords).T
            polys.append((i, xs, ys, eid))
        return polys
    cb = storage.join(path, "cell_boundaries")
    if fs.exists(cb) and fs.isdir(cb):
        files_all = fs.ls(cb, detail=False)
        files = sorted(p for p in files_all if p.endswith(("_polygons.gz", "_polygons.csv")))
        z = options["z_plane"]
        hdf = sorted(p for p in files_all if p.endswith(".hdf5"))
        if hdf:
            return _hdf5_cells(fs, hdf, z)
        pick = [p for p in files if f"z{z}_" in p.rsplit("/", 1)[-1]] or files[:1]
        if pick:
            with fs.open(
                pick[0], "rb", compression="gzip" if pick[0].endswith(".gz") else None
            ) as fh:
                df = pd.read_csv(fh)
            require_columns(df.columns, ("x", "y", "poly_ID"), pick[0])
            if (df.y < 0).all():
                df["y"] = -df["y"]  # Giotto exports store y negated
            for i, (pid, g) in enumerate(df.groupby("poly_ID", sort=True), start=1):
                polys.append((i, g.x.to_numpy(float), g.y.to_numpy(float), pid))
    return polys


def _hdf5_cells(fs, files, z):
    """Polygons from per-fov ``feature_data_*.hdf5`` (featuredata/<id>/zIndex_k/p_0/coordinates,
    µm).

    Plane ``z`` when given as a number, else the middle z index of each cell.
    """
    import h5py

    polys = []
    for p in files:
        try:
            with fs.open(p, "rb") as fh, h5py.File(fh, "r") as f:
                for cid in sorted(f["featuredata"]):
                    cell = f["featuredata"][cid]
                    zs = sorted(k for k in cell if k.startswith("zIndex_"))
                    if not zs:
                        continue
                    key = (
                        f"zIndex_{z}" if z != "max" and f"zIndex_{z}" in cell else zs[len(zs) // 2]
                    )
                    if "p_0" not in cell[key]:
                        continue
                    xy = np.asarray(cell[key]["p_0"]["coordinates"]).reshape(-1, 2)
                    polys.append((len(polys) + 1, xy[:, 0], xy[:, 1], cid))
        except (OSError, KeyError) as e:
            raise InputError(
                f"{p}: expected MERSCOPE feature data (featuredata/<cell>/zIndex_k/p_0/"
                f"coordinates) ({e})"
            ) from e
    return polys

"""Load a segmentation reference: a label mask, per-transcript reference IDs, or a chip's truth.

A reference is a small record of whatever is available; ``evaluate`` computes the metrics each
part allows, so a transcript-only reference still yields the per-transcript scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import constants as K
from ..errors import InputError
from ..io import storage


@dataclass
class Reference:
    """What a reference offers; any part may be None."""

    url: str
    labels: Any = None  # 2-D uint label array (zarr or numpy) on the prediction's grid
    transcripts: pd.DataFrame | None = None  # key column(s) + "ref_id"


def open_label_array(url: str, storage_options: dict | None = None, array: str = K.LABELS_CELLS):
    """Open a label mask lazily: a zarr array, a zarr group holding ``array``, or a TIFF file."""
    low = url.lower()
    if low.endswith((".tif", ".tiff")):
        import tifffile

        try:
            return np.asarray(tifffile.imread(url))
        except FileNotFoundError as exc:
            raise InputError(f"reference mask not found: {url}") from exc
    import zarr

    try:
        kw = (
            {"storage_options": storage_options}
            if storage.is_remote(url) and storage_options
            else {}
        )
        node = zarr.open(url, mode="r", **kw)
    except (FileNotFoundError, Exception) as exc:  # zarr raises several kinds for a missing store
        raise InputError(f"cannot open reference mask {url}: {exc}") from exc
    if isinstance(node, zarr.Group):
        if array not in node:
            raise InputError(f"zarr group {url} has no '{array}' array")
        node = node[array]
    if node.ndim != 2:
        raise InputError(f"reference mask {url} must be 2-D, has shape {node.shape}")
    if not np.issubdtype(node.dtype, np.integer):
        raise InputError(f"reference mask {url} must hold integer labels, has dtype {node.dtype}")
    return node


def _read_parquet(url: str, columns=None, storage_options=None) -> pd.DataFrame:
    try:
        return pd.read_parquet(
            url, columns=columns, storage_options=storage.pandas_options(url, storage_options)
        )
    except FileNotFoundError as exc:
        raise InputError(f"reference table not found: {url}") from exc
    except (KeyError, ValueError) as exc:
        raise InputError(f"{url}: cannot read columns {columns}: {exc}") from exc


def transcript_reference(url: str, column: str = K.CELL_TRUE, storage_options=None) -> pd.DataFrame:
    """Per-transcript reference IDs from a parquet column, keyed by transcript_id (or row order)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(
            storage.fs_and_path(url, storage_options)[0].open(
                storage.fs_and_path(url, storage_options)[1]
            )
        ).names
    except FileNotFoundError as exc:
        raise InputError(f"reference table not found: {url}") from exc
    if column not in names:
        raise InputError(
            f"{url}: no column '{column}' with reference cell IDs (columns: {', '.join(names)})"
        )
    key = K.TRANSCRIPT_ID if K.TRANSCRIPT_ID in names else None
    df = _read_parquet(url, [c for c in (key, column) if c], storage_options)
    if not np.issubdtype(df[column].dtype, np.integer):
        raise InputError(
            f"{url}: column '{column}' must hold integer cell IDs, has {df[column].dtype}"
        )
    df = df.rename(columns={column: "ref_id"})
    if key is None:
        df[K.INPUT_ROW] = np.arange(len(df), dtype=np.int64)
    return df


def load_reference(url: str, storage_options: dict | None = None) -> Reference:
    """Resolve ``url`` into a Reference.

    Accepted: a generated chip folder (``truth/cells.zarr`` and a ``cell_true`` column), a zarr /
    TIFF label mask, or ``table.parquet`` / ``table.parquet#column`` with reference IDs per
    transcript (default column ``cell_true``).
    """
    path, _, column = url.partition("#")
    if path.rstrip("/").endswith(".parquet"):
        return Reference(
            url, transcripts=transcript_reference(path, column or K.CELL_TRUE, storage_options)
        )
    if path.lower().endswith((".tif", ".tiff")) or (
        path.rstrip("/").endswith(".zarr") and storage.exists(path, storage_options)
    ):
        return Reference(url, labels=open_label_array(path, storage_options))
    truth = storage.join(path, K.TRUTH_CELLS_ZARR)
    if storage.exists(truth, storage_options):
        ref = Reference(url, labels=open_label_array(truth, storage_options))
        tx = storage.join(path, K.TRANSCRIPTS_PARQUET)
        if storage.exists(tx, storage_options):
            try:
                ref.transcripts = transcript_reference(tx, K.CELL_TRUE, storage_options)
            except InputError:
                pass  # a truth mask without per-transcript truth still gives pixel metrics
        return ref
    raise InputError(
        f"reference {url} is neither a chip with {K.TRUTH_CELLS_ZARR}, a label mask (.zarr/.tif), "
        "nor a transcript table (.parquet[#column])"
    )


# -- nucleus references ------------------------------------------------------------------------
#: Per-transcript columns that say a transcript lies in the vendor's nucleus, and how to read them.
NUCLEUS_FLAG_COLUMNS = ("overlaps_nucleus", "CellComp")


@dataclass(frozen=True)
class Grid:
    """A run's pixel grid: (H, W) px at ``pixel_size_um`` from ``origin_um`` (x0, y0)."""

    shape: tuple[int, int]
    pixel_size_um: float
    origin_um: tuple[float, float]
    where: str  # the file the grid was read from, for error messages

    def extent_um(self) -> tuple[float, float, float, float]:
        h, w = self.shape
        x0, y0 = self.origin_um
        return (x0, x0 + w * self.pixel_size_um, y0, y0 + h * self.pixel_size_um)

    def describe(self) -> str:
        x0, x1, y0, y1 = self.extent_um()
        return (
            f"{self.where}: {self.shape[0]}x{self.shape[1]} px at {self.pixel_size_um:g} µm/px, "
            f"x {x0:.1f}..{x1:.1f}, y {y0:.1f}..{y1:.1f} µm"
        )


@dataclass
class NucleusReference:
    """Reference nuclei as labels on a run's grid, and/or per-transcript in-nucleus flags."""

    url: str
    kind: str  # what the labels are: "label mask", "polygons", "chip nuclei", "generated truth"
    labels: Any = None
    flags: pd.DataFrame | None = None  # key column + "ref_in_nucleus"


def nucleus_flags(values: pd.Series, column: str) -> np.ndarray:
    """In-nucleus booleans from a vendor column: Xenium ``overlaps_nucleus`` (0/1) or CosMx
    ``CellComp`` (``"Nuclear"``).
    """
    if column == "CellComp" or values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        return values.astype(str).str.lower().isin(["nuclear", "nucleus", "true", "1"]).to_numpy()
    return values.fillna(0).to_numpy().astype(bool)


class PolygonLabels:
    """Polygons (µm) as a lazily rasterised label array on a grid: any window, never the whole
    chip.
    """

    def __init__(self, polys, grid: Grid):
        self.shape = tuple(grid.shape)
        self.ndim = 2
        self.dtype = np.dtype(K.LABEL_DTYPE)
        ps, (x0, y0) = grid.pixel_size_um, grid.origin_um
        self._polys = [
            (int(lab), (np.asarray(ys) - y0) / ps - 0.5, (np.asarray(xs) - x0) / ps - 0.5)
            for lab, xs, ys in polys
        ]
        self._bbox = np.array(
            [(r.min(), r.max(), c.min(), c.max()) for _, r, c in self._polys]
        ).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self._polys)

    def __getitem__(self, key):
        from skimage.draw import polygon

        rs, cs = key
        r0, r1, _ = rs.indices(self.shape[0])
        c0, c1, _ = cs.indices(self.shape[1])
        out = np.zeros((r1 - r0, c1 - c0), self.dtype)
        b = self._bbox
        hit = np.flatnonzero(
            (b[:, 1] >= r0 - 1) & (b[:, 0] < r1) & (b[:, 3] >= c0 - 1) & (b[:, 2] < c1)
        )
        for i in hit:
            lab, rr, cc = self._polys[i]
            pr, pc_ = polygon(rr - r0, cc - c0, shape=out.shape)
            out[pr, pc_] = lab
        return out


def _polygons(url: str, storage_options) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(label, x_um, y_um) polygons from a GeoParquet (``geometry``) or a vertex table."""
    from ..io.generic import polygons_from_vertex_table, read_vertex_table

    fs, path = storage.fs_and_path(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"nucleus reference not found: {url}")
    df = read_vertex_table(fs, path)
    if "geometry" in df.columns:
        import shapely

        try:
            geoms = shapely.from_wkb(df["geometry"].to_numpy())
        except Exception as exc:  # not WKB
            raise InputError(f"{url}: column 'geometry' is not WKB polygons ({exc})") from exc
        out = []
        for i, g in enumerate(geoms, start=1):
            for part in getattr(g, "geoms", [g]):
                if part is not None and part.geom_type == "Polygon" and not part.is_empty:
                    xs, ys = np.asarray(part.exterior.coords).T
                    out.append((i, xs, ys))
        return out
    id_col = next(
        (c for c in ("cell_id", "nucleus_id", "EntityID", "cell") if c in df.columns), None
    )
    if id_col is None:
        raise InputError(
            f"{url}: a nucleus polygon table needs a 'geometry' column (GeoParquet) or the vertex "
            f"columns cell_id, vertex_x, vertex_y (has: {', '.join(map(str, df.columns))})"
        )
    return polygons_from_vertex_table(df, id_col, "vertex_x", "vertex_y", url)[0]


def _check_polygons_in_frame(polys, grid: Grid, url: str) -> None:
    """Refuse polygons whose coordinate frame is not the run's: most must lie on its grid."""
    if not polys:
        raise InputError(f"{url}: no nucleus polygons")
    cx = np.array([np.mean(xs) for _, xs, _ in polys])
    cy = np.array([np.mean(ys) for _, _, ys in polys])
    x0, x1, y0, y1 = grid.extent_um()
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    if inside.mean() < 0.5:
        raise InputError(
            f"nucleus reference {url} is not in the run's coordinate frame: its {len(polys)} "
            f"polygons span x {cx.min():.1f}..{cx.max():.1f}, y {cy.min():.1f}..{cy.max():.1f} µm "
            f"and only {int(inside.sum())} lie on the run's grid ({grid.describe()})"
        )


def _chip_grid(chip_url: str, storage_options) -> Grid:
    from ..io.chip import open_chip

    chip = open_chip(chip_url, storage_options)
    return Grid(
        chip.shape_yx, chip.pixel_size_um, chip.origin_um, storage.join(chip_url, K.CHIP_JSON)
    )


def _same_grid(a: Grid, b: Grid, url: str) -> None:
    tol = 1e-6 * max(a.pixel_size_um, 1.0)
    if (
        tuple(a.shape) != tuple(b.shape)
        or abs(a.pixel_size_um - b.pixel_size_um) > tol
        or any(
            abs(p - q) > a.pixel_size_um / 2 for p, q in zip(a.origin_um, b.origin_um, strict=False)
        )
    ):
        raise InputError(
            f"nucleus reference {url} is not on the run's grid: reference {b.describe()}; "
            f"run {a.describe()}"
        )


def _mask_on_grid(url: str, grid: Grid, storage_options):
    arr = open_label_array(url, storage_options, array=K.LABELS_NUCLEI)
    if tuple(arr.shape) != tuple(grid.shape):
        raise InputError(
            f"nucleus reference {url} is {arr.shape[0]}x{arr.shape[1]} px but the run's grid is "
            f"{grid.shape[0]}x{grid.shape[1]} px ({grid.describe()})"
        )
    return arr


def _flag_table(url: str, column: str, storage_options) -> pd.DataFrame:
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"nucleus reference not found: {url}")
    with fs.open(path, "rb") as fh:
        names = pq.read_schema(fh).names
    if column not in names:
        raise InputError(
            f"{url}: no column '{column}' of per-transcript nucleus flags (columns: "
            f"{', '.join(names)})"
        )
    key = K.TRANSCRIPT_ID if K.TRANSCRIPT_ID in names else None
    df = _read_parquet(url, [c for c in (key, column) if c], storage_options)
    out = pd.DataFrame({"ref_in_nucleus": nucleus_flags(df[column], column)})
    if key:
        out[key] = df[key].to_numpy()
    else:
        out[K.INPUT_ROW] = np.arange(len(df), dtype=np.int64)
    return out


def load_nucleus_reference(url: str, grid: Grid, storage_options=None) -> NucleusReference:
    """Reference nuclei on the run's ``grid``, refusing any whose grid or frame differs.

    Accepted: a label mask (``.tif``, a zarr array, or a zarr group with ``nuclei`` such as a
    run's ``labels.zarr``); nucleus polygons in µm (GeoParquet with ``geometry``, or a vertex table
    cell_id, vertex_x, vertex_y as parquet/CSV: Xenium ``nucleus_boundaries``, MERFISH); a chip
    folder (``truth/nuclei.zarr`` if generated, else its vendor ``nuclei.zarr``; its grid must be
    the run's); or ``table.parquet#column`` with per-transcript flags (``overlaps_nucleus`` 0/1,
    ``CellComp`` "Nuclear"), joined on transcript_id, else row order.
    """
    so = storage_options
    path, _, column = url.partition("#")
    low = path.lower().rstrip("/")
    if column:
        return NucleusReference(url, "transcript flags", flags=_flag_table(path, column, so))
    if low.endswith((".tif", ".tiff", ".zarr")):
        return NucleusReference(url, "label mask", labels=_mask_on_grid(path, grid, so))
    if low.endswith((".parquet", ".csv", ".csv.gz", ".geoparquet")):
        polys = _polygons(path, so)
        _check_polygons_in_frame(polys, grid, url)
        return NucleusReference(url, "polygons", labels=PolygonLabels(polys, grid))
    if storage.exists(storage.join(path, K.CHIP_JSON), so):
        _same_grid(grid, _chip_grid(path, so), url)
        for rel, kind in ((K.TRUTH_NUCLEI_ZARR, "generated truth"), (K.NUCLEI_ZARR, "chip nuclei")):
            if storage.exists(storage.join(path, rel), so):
                return NucleusReference(
                    url, kind, labels=_mask_on_grid(storage.join(path, rel), grid, so)
                )
        raise InputError(f"chip {url} has neither {K.TRUTH_NUCLEI_ZARR} nor {K.NUCLEI_ZARR}")
    raise InputError(
        f"nucleus reference {url} is neither a label mask (.tif/.zarr), nucleus polygons "
        "(GeoParquet or a cell_id/vertex_x/vertex_y table), a chip folder, nor "
        "table.parquet#column with per-transcript nucleus flags"
    )


def chip_nucleus_reference(chip_url: str, grid: Grid, storage_options=None):
    """The nuclei a chip carries (generated truth, else vendor), or None; grid checked."""
    so = storage_options
    if not chip_url or not storage.exists(storage.join(chip_url, K.CHIP_JSON), so):
        return None
    if not any(
        storage.exists(storage.join(chip_url, rel), so)
        for rel in (K.TRUTH_NUCLEI_ZARR, K.NUCLEI_ZARR)
    ):
        return None
    return load_nucleus_reference(chip_url, grid, so)

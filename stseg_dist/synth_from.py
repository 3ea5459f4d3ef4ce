"""``stseg synth --from``: a slide of any size tiled from a real crop, for scale runs on real
expression and stain statistics.

The source (a chip, or a vendor bundle converted first) is laid out copy after copy; odd copy
columns are mirrored in x and odd copy rows in y, so that neighbouring copies meet edge to edge
(the pixel on each side of a seam is the same source pixel). Everything pixel-exact travels with
the image: the stain, the vendor nuclei (``nuclei.zarr``) and any other label array of the chip
(vendor cells, generated truth), and every transcript, mirrored into the same pixel of its copy.
Per-transcript references (integer label columns such as ``vendor_nucleus_label`` or
``cell_true``, string IDs such as Xenium's ``vendor_cell_id``) are renumbered per copy, so that
each copy's cells are distinct and can be scored at scale: integer labels ``L > 0`` become
``L + k * stride`` in copy ``k`` (``stride`` = the largest label of the source + 1, the same in
the arrays and the columns, so they still agree), string IDs get the suffix ``-c<k>`` (none in
copy 0; unassigned IDs stay as they are), and ``transcript_id`` becomes ``k * (max + 1) + id``.

Every copy is the same tissue: this is scale evidence, not new accuracy evidence.

The slide is written block by block (``block_px``): the image and label arrays chunk-wise, the
transcripts one row group per block sorted by (y, x) as :func:`stseg_dist.synth.synth_chip`
writes them, so the slide is never whole in memory (the source crop is).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import constants as K
from .errors import ConfigError, InputError, OutputError
from .io import storage
from .io.chip import open_chip
from .io.chip_writer import ChipWriter

#: Label arrays of a chip carried along (relative path), when present.
LABEL_ARRAYS = (K.NUCLEI_ZARR, "vendor_cells.zarr", K.TRUTH_CELLS_ZARR, K.TRUTH_NUCLEI_ZARR)
#: Integer per-transcript reference columns renumbered per copy, when present.
LABEL_COLUMNS = (K.CELL_TRUE, "vendor_nucleus_label", "vendor_cell_label")
#: String per-transcript reference columns renumbered per copy, when present.
ID_COLUMNS = ("vendor_cell_id",)
#: String IDs that mean "no cell" (kept as they are in every copy).
UNASSIGNED = ("", "0", "-1", "UNASSIGNED")
TRUTH_CELLS_PARQUET = "truth/cells.parquet"


def synth_from(
    source: str,
    out: str,
    width_um: float,
    height_um: float,
    *,
    block_px: int = 1024,
    platform: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Write a ``width_um`` x ``height_um`` slide tiled from ``source`` (a chip folder or a
    vendor bundle with an image) to ``out``; return a summary of what was written.

    Bad input (a missing source, a non-positive size, a bundle without a stain image, an output
    that exists) raises before anything is written.
    """
    t0 = time.perf_counter()
    for name, value in (("width_um", width_um), ("height_um", height_um)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"synth --from: {name} must be a positive number, got {value!r}")
    if not isinstance(block_px, int) or block_px < 16:
        raise ConfigError(f"synth --from: block_px must be an integer >= 16, got {block_px!r}")
    if not storage.exists(source):
        raise InputError(f"synth --from: source not found: {source}")
    if storage.exists(out) and not overwrite:
        fs, path = storage.fs_and_path(out)
        if not fs.isdir(path) or fs.ls(path):
            raise OutputError(f"{out}: exists (pass --overwrite to replace it)")
    if storage.exists(storage.join(source, K.CHIP_JSON)):
        return _tile(open_chip(source), source, out, width_um, height_um, block_px, overwrite, t0)
    from .io.bundles import convert_bundle

    with tempfile.TemporaryDirectory(prefix="stseg-synth-from-") as tmp:
        chip_url = str(Path(tmp) / "chip")
        report = convert_bundle(source, chip_url, platform)
        if report.get("image_source") != "vendor_image":
            raise InputError(
                f"synth --from: {source} has no stain image (the converter would render one from "
                "transcript density); tiling needs the real stain"
            )
        return _tile(open_chip(chip_url), source, out, width_um, height_um, block_px, overwrite, t0)


class _Source:
    """The crop in memory: image, label arrays and the transcripts (with their pixel)."""

    def __init__(self, chip):
        if chip.meta.extra.get("image_source") == "transcript_density":
            raise InputError(
                f"synth --from: {chip.url} has no stain image (its image was rendered from "
                "transcript density); tiling needs the real stain"
            )
        self.chip = chip
        self.ps = float(chip.pixel_size_um)
        self.origin = tuple(float(v) for v in chip.origin_um)
        self.image = np.asarray(chip._image_array()[...])
        self.H, self.W = self.image.shape[-2:]
        self.labels = {}
        for rel in LABEL_ARRAYS:
            url = storage.join(chip.url, rel)
            if storage.exists(storage.join(url, "zarr.json")):
                self.labels[rel] = np.asarray(storage.open_zarr_array(url, "r")[...])
        fs, path = storage.fs_and_path(storage.join(chip.url, K.TRANSCRIPTS_PARQUET))
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        for name in table.column_names:  # dictionary columns decoded: parts concatenate
            col = table.column(name)
            if pa.types.is_dictionary(col.type):
                table = table.set_column(
                    table.column_names.index(name), name, col.cast(col.type.value_type)
                )
        x = table.column(K.X).to_numpy() - self.origin[0]
        y = table.column(K.Y).to_numpy() - self.origin[1]
        inside = (x >= 0) & (x < self.W * self.ps) & (y >= 0) & (y < self.H * self.ps)
        self.n_outside = int((~inside).sum())
        table, x, y = table.filter(pa.array(inside)), x[inside], y[inside]
        row = np.minimum((y / self.ps).astype(np.int64), self.H - 1)
        col = np.minimum((x / self.ps).astype(np.int64), self.W - 1)
        order = np.argsort(row, kind="stable")
        self.table = table.take(pa.array(order))
        self.x, self.y, self.row, self.col = x[order], y[order], row[order], col[order]
        self.label_columns = [c for c in LABEL_COLUMNS if c in table.column_names]
        self.id_columns = [c for c in ID_COLUMNS if c in table.column_names]
        top = [int(a.max()) if a.size else 0 for a in self.labels.values()]
        top += [int(pc.max(self.table.column(c)).as_py() or 0) for c in self.label_columns]
        self.stride = max(top, default=0) + 1
        tid = self.table.column(K.TRANSCRIPT_ID) if K.TRANSCRIPT_ID in table.column_names else None
        self.tid_stride = int(pc.max(tid).as_py() or 0) + 1 if tid is not None else None


def _tile(chip, source, out, width_um, height_um, block_px, overwrite, t0) -> dict:
    src = _Source(chip)
    ps, H0, W0 = src.ps, src.H, src.W
    H, W = int(math.ceil(height_um / ps)), int(math.ceil(width_um / ps))
    n_rows, n_cols = math.ceil(H / H0), math.ceil(W / W0)
    n_copies = n_rows * n_cols
    if src.stride * n_copies >= 2**32:
        raise ConfigError(
            f"synth --from: {n_copies} copies of labels up to {src.stride - 1} overflow uint32 "
            "labels"
        )
    if src.tid_stride is not None and src.tid_stride * n_copies >= 2**63:
        raise ConfigError(f"synth --from: {n_copies} copies overflow the transcript IDs")
    extra = {rel: K.LABEL_DTYPE for rel in src.labels if rel != K.NUCLEI_ZARR}
    meta = {k: v for k, v in chip.meta.extra.items() if k not in ("image", "source", "synth_from")}
    meta["synth_from"] = {
        "source": str(source),
        "copies": [n_rows, n_cols],
        "copy_shape_px": [H0, W0],
        "mirrored": "odd copy columns flipped in x, odd copy rows in y",
        "label_stride": src.stride,
        "transcript_id_stride": src.tid_stride,
        "id_suffix": "-c<copy>",
        "copy_index": "row * copies[1] + column",
    }
    schema = _schema(src.table.schema)
    with ChipWriter(
        out,
        (*src.image.shape[:-2], H, W),
        ps,
        origin_um=src.origin,
        platform=chip.meta.platform,
        image_dtype=str(src.image.dtype),
        chunk_px=min(block_px, 512),
        with_nuclei=K.NUCLEI_ZARR in src.labels,
        extra_arrays=extra,
        meta_extra=meta,
        transcript_schema=schema,
        overwrite=overwrite,
    ) as wr:
        for r0 in range(0, H, block_px):
            for c0 in range(0, W, block_px):
                r1, c1 = min(r0 + block_px, H), min(c0 + block_px, W)
                _write_block(wr, src, r0, r1, c0, c1, n_cols)
        truth = _truth_cells(chip, src, H, W, n_rows, n_cols)
        if truth is not None:
            fs, path = storage.fs_and_path(storage.join(out, TRUTH_CELLS_PARQUET))
            with fs.open(path, "wb") as fh:
                pq.write_table(truth, fh)
        n_tx = wr.n_transcripts
    return {
        "out": str(out),
        "source": str(source),
        "shape": [H, W],
        "pixel_size_um": ps,
        "copies": [n_rows, n_cols],
        "n_transcripts": int(n_tx),
        "n_source_transcripts": int(len(src.x)),
        "n_source_outside_image": src.n_outside,
        "label_arrays": sorted(src.labels),
        "renumbered_columns": src.label_columns + src.id_columns,
        "label_stride": src.stride,
        "seconds": time.perf_counter() - t0,
    }


def _schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
            for f in schema
        ]
    )


def mirror_index(n_out: int, start: int, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """For output pixels ``start .. start + n_out - 1`` along one axis: (source pixel, copy)."""
    p = np.arange(start, start + n_out, dtype=np.int64)
    copy, local = np.divmod(p, n_src)
    return np.where(copy % 2 == 0, local, n_src - 1 - local), copy


def _write_block(wr, src: _Source, r0: int, r1: int, c0: int, c1: int, n_cols: int) -> None:
    rows, copy_r = mirror_index(r1 - r0, r0, src.H)
    cols, copy_c = mirror_index(c1 - c0, c0, src.W)
    key = (*(slice(None),) * (src.image.ndim - 2), slice(r0, r1), slice(c0, c1))
    wr.write_image(key, src.image.take(rows, axis=-2).take(cols, axis=-1))
    copy = copy_r[:, None] * n_cols + copy_c[None, :]
    for rel, lab in src.labels.items():
        block = lab.take(rows, axis=0).take(cols, axis=1).astype(np.int64)
        block = np.where(block > 0, block + copy * src.stride, 0).astype(K.LABEL_DTYPE)
        wr.write_array(rel, np.s_[r0:r1, c0:c1], block)
    parts = []
    for i in np.unique(copy_r):
        for j in np.unique(copy_c):
            parts.append(_copy_part(src, int(i), int(j), r0, r1, c0, c1, n_cols))
    table = pa.concat_tables(parts)
    if table.num_rows:
        order = np.lexsort((table.column(K.X).to_numpy(), table.column(K.Y).to_numpy()))
        wr.write_transcripts(table.take(pa.array(order)), row_group_size=table.num_rows)


def _copy_part(src: _Source, i: int, j: int, r0, r1, c0, c1, n_cols: int) -> pa.Table:
    """The transcripts of copy (i, j) that fall into output rows r0:r1, cols c0:c1."""
    H0, W0, ps = src.H, src.W, src.ps
    a, b = max(r0, i * H0) - i * H0, min(r1, (i + 1) * H0) - i * H0  # copy-local rows
    ca, cb = max(c0, j * W0) - j * W0, min(c1, (j + 1) * W0) - j * W0
    sa, sb = (a, b) if i % 2 == 0 else (H0 - b, H0 - a)  # source rows
    sca, scb = (ca, cb) if j % 2 == 0 else (W0 - cb, W0 - ca)
    lo, hi = np.searchsorted(src.row, [sa, sb])
    sel = lo + np.nonzero((src.col[lo:hi] >= sca) & (src.col[lo:hi] < scb))[0]
    k = i * n_cols + j
    t = src.table.take(pa.array(sel))
    x = _place(src.x[sel], src.col[sel], W0, ps, j, src.origin[0])
    y = _place(src.y[sel], src.row[sel], H0, ps, i, src.origin[1])
    t = _set(t, K.X, pa.array(x, t.schema.field(K.X).type))
    t = _set(t, K.Y, pa.array(y, t.schema.field(K.Y).type))
    if k and src.tid_stride is not None:
        tid = t.column(K.TRANSCRIPT_ID)
        t = _set(t, K.TRANSCRIPT_ID, pc.add(tid, pa.scalar(k * src.tid_stride, tid.type)))
    for name in src.label_columns if k else ():
        col = t.column(name)
        shifted = pc.add(col.cast(pa.int64()), k * src.stride).cast(col.type)
        t = _set(t, name, pc.if_else(pc.greater(col, 0), shifted, col))
    for name in src.id_columns if k else ():
        col = t.column(name).cast(pa.string())
        tagged = pc.binary_join_element_wise(col, pa.scalar(f"-c{k}"), "")
        keep = pc.fill_null(pc.is_in(col, pa.array(UNASSIGNED)), True)
        t = _set(t, name, pc.if_else(keep, col, tagged))
    return t


def _place(v: np.ndarray, pix: np.ndarray, n: int, ps: float, copy: int, origin: float):
    """Source coordinates (µm from the crop's corner, in source pixels ``pix``) into copy
    ``copy`` along one axis: as they are in even copies, mirrored in odd ones; each lands in the
    output pixel its source pixel maps to, also where rounding (a coordinate on a pixel edge)
    would put it in the next one.
    """
    if copy % 2 == 0:
        local, p = v, pix
    else:
        local, p = n * ps - v, n - 1 - pix
    p = p + copy * n
    out = local + copy * n * ps + origin
    for _ in range(8):  # a few ulps at most
        got = np.floor((out - origin) / ps)
        low, high = got < p, got > p
        if not (low.any() or high.any()):
            break
        out = np.where(
            low, np.nextafter(out, np.inf), np.where(high, np.nextafter(out, -np.inf), out)
        )
    return out


def _set(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, values)


def _truth_cells(chip, src: _Source, H: int, W: int, n_rows: int, n_cols: int) -> pa.Table | None:
    """A generated chip's truth/cells.parquet per copy: IDs renumbered, centres mirrored, cells
    whose centre falls off the slide dropped.
    """
    url = storage.join(chip.url, TRUTH_CELLS_PARQUET)
    if not storage.exists(url):
        return None
    fs, path = storage.fs_and_path(url)
    with fs.open(path, "rb") as fh:
        truth = pq.read_table(fh).to_pandas()
    import pandas as pd

    ps, x0, y0 = src.ps, src.origin[0], src.origin[1]
    parts = []
    for i in range(n_rows):
        for j in range(n_cols):
            t = truth.copy()
            k = i * n_cols + j
            x, y = t["x"].to_numpy() - x0, t["y"].to_numpy() - y0
            x = x if j % 2 == 0 else src.W * ps - x
            y = y if i % 2 == 0 else src.H * ps - y
            t["x"], t["y"] = x + j * src.W * ps + x0, y + i * src.H * ps + y0
            t["cell_id"] = t["cell_id"] + k * src.stride
            keep = (t["x"] >= x0) & (t["x"] < x0 + W * ps) & (t["y"] >= y0) & (t["y"] < y0 + H * ps)
            parts.append(t[keep.to_numpy()])
    return pa.Table.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)

"""Windowed reads of a parquet transcript table, pruned by row-group statistics.

The table is indexed once from parquet footers (no data read): for every row group its file,
row offset and x/y bounds. A tile then reads only the row groups that can hold its window, so a
spatially sorted table costs each tile only its share; the global row index is kept so outputs
can name every input transcript even when it has no ``transcript_id``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import constants as K
from ..errors import InputError
from . import storage

ROW = "_row"  # global input row index, added to every read


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int
    row_offset: int
    x_min: float
    x_max: float
    y_min: float
    y_max: float


@dataclass
class TranscriptSource:
    url: str
    files: list[str]
    row_groups: list[RowGroup]
    schema: pa.Schema
    storage_options: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(rg.num_rows for rg in self.row_groups)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> TranscriptSource:
        so = dict(storage_options or {})
        fs, path = storage.fs_and_path(url, so)
        if fs.isdir(path):
            files = sorted(
                p for p in fs.find(path) if p.endswith(".parquet") and "/." not in p[len(path) :]
            )
            if not files:
                raise InputError(f"{url}: parquet dataset folder holds no .parquet files")
        else:
            files = [path]
        row_groups: list[RowGroup] = []
        schema = None
        offset = 0
        for f in files:
            try:
                with fs.open(f, "rb") as fh:
                    md = pq.ParquetFile(fh).metadata
                    file_schema = md.schema.to_arrow_schema()
            except Exception as exc:
                raise InputError(f"{f}: not a readable parquet file: {exc}") from exc
            missing = [c for c in K.REQUIRED_TRANSCRIPT_COLUMNS if c not in file_schema.names]
            if missing:
                raise InputError(
                    f"{f}: missing required column(s) {missing}; transcripts need "
                    f"{list(K.REQUIRED_TRANSCRIPT_COLUMNS)} (x, y in µm), found {file_schema.names}"
                )
            for col in (K.X, K.Y):
                t = file_schema.field(col).type
                if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                    raise InputError(f"{f}: column '{col}' must be numeric (µm), found type {t}")
            t = file_schema.field(K.GENE).type
            if not (
                pa.types.is_string(t)
                or pa.types.is_large_string(t)
                or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))
            ):
                raise InputError(f"{f}: column '{K.GENE}' must be strings, found type {t}")
            schema = schema or file_schema
            xi = file_schema.get_field_index(K.X)
            yi = file_schema.get_field_index(K.Y)
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                xb = _bounds(rg.column(xi))
                yb = _bounds(rg.column(yi))
                row_groups.append(
                    RowGroup(storage_join(url, f, fs), i, rg.num_rows, offset, *xb, *yb)
                )
                offset += rg.num_rows
        return cls(url, [storage_join(url, f, fs) for f in files], row_groups, schema, so)

    def read_row_group(self, rg: RowGroup, columns: list[str] | None = None) -> pa.Table:
        fs, path = storage.fs_and_path(rg.path, self.storage_options)
        try:
            with fs.open(path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(rg.index, columns=columns)
        except Exception as exc:
            raise InputError(f"{rg.path}: cannot read row group {rg.index}: {exc}") from exc
        rows = pa.array(np.arange(rg.row_offset, rg.row_offset + rg.num_rows, dtype=np.int64))
        return table.append_column(ROW, rows)

    def read_window(
        self,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows with x in [x0, x1) and y in [y0, y1), plus the global row index ``_row``."""
        x0, x1 = x_range
        y0, y1 = y_range
        cols = None
        if columns is not None:
            cols = list(dict.fromkeys([K.X, K.Y, *columns]))
        parts = []
        for rg in self.row_groups:
            if rg.x_max < x0 or rg.x_min >= x1 or rg.y_max < y0 or rg.y_min >= y1:
                continue
            t = self.read_row_group(rg, cols)
            x = t.column(K.X).to_numpy(zero_copy_only=False)
            y = t.column(K.Y).to_numpy(zero_copy_only=False)
            keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
            if keep.any():
                parts.append(t.filter(pa.array(keep)))
        if not parts:
            schema = (
                self.schema if cols is None else pa.schema([self.schema.field(c) for c in cols])
            )
            return schema.empty_table().append_column(ROW, pa.array([], type=pa.int64()))
        return _concat(parts)


def _concat(parts: list[pa.Table]) -> pa.Table:
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowInvalid:
        return pa.concat_tables([p.cast(parts[0].schema) for p in parts])


def storage_join(url: str, path: str, fs) -> str:
    """Turn an fs-internal path back into a URL the worker can reopen."""
    if storage.is_remote(url):
        if "://" in path:  # http(s): the filesystem's paths are whole URLs already
            return path
        proto = url.split("://", 1)[0]
        return f"{proto}://{path}"
    return path


def _bounds(col_meta) -> tuple[float, float]:
    """Row-group min/max; without statistics, (-inf, inf) so the group is always read."""
    st = col_meta.statistics
    if st is None or not st.has_min_max:
        return (-math.inf, math.inf)
    lo, hi = float(st.min), float(st.max)
    # NaN can hide from statistics; treat groups with odd stats as unbounded.
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (-math.inf, math.inf)
    return (lo, hi)

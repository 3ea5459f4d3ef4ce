"""The scan stage: one pass over the transcript table before any output is touched.

Reads only x, y and gene, row group by row group (in parallel), to reject NaN/inf or
out-of-extent coordinates and missing genes with the file and row at fault, and to build the
chip-wide gene vocabulary that every tile's counts are indexed by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import constants as K
from .errors import InputError
from .io.transcripts import RowGroup, TranscriptSource


@dataclass
class ScanPart:
    n_rows: int
    genes: list[str]
    n_nonfinite: int
    n_outside: int
    n_null_gene: int
    example: str | None  # first offending row, described


def scan_row_groups(
    source: TranscriptSource,
    groups: list[RowGroup],
    extent: tuple[float, float, float, float],
    tol: float,
) -> ScanPart:
    x_min, x_max, y_min, y_max = extent
    genes: set[str] = set()
    n = nonfinite = outside = null_gene = 0
    example = None
    for rg in groups:
        t = source.read_row_group(rg, [K.X, K.Y, K.GENE])
        x = t.column(K.X).to_numpy(zero_copy_only=False).astype(np.float64)
        y = t.column(K.Y).to_numpy(zero_copy_only=False).astype(np.float64)
        rows = t.column("_row").to_numpy()
        bad = ~(np.isfinite(x) & np.isfinite(y))
        out = ~bad & ((x < x_min - tol) | (x > x_max + tol) | (y < y_min - tol) | (y > y_max + tol))
        g = t.column(K.GENE)
        nulls = g.null_count
        if bad.any() and example is None:
            i = int(np.flatnonzero(bad)[0])
            example = f"{rg.path}: row {rows[i]} has x={x[i]!r}, y={y[i]!r} (not finite)"
        if out.any() and example is None:
            i = int(np.flatnonzero(out)[0])
            example = (
                f"{rg.path}: row {rows[i]} at x={x[i]:.3f}, y={y[i]:.3f} µm lies outside the image "
                f"extent x [{x_min:.3f}, {x_max:.3f}], y [{y_min:.3f}, {y_max:.3f}] µm"
            )
        if nulls and example is None:
            i = int(np.flatnonzero(pc.is_null(g).to_numpy(zero_copy_only=False))[0])
            example = f"{rg.path}: row {rows[i]} has a null '{K.GENE}'"
        uniq = pc.unique(g.combine_chunks() if isinstance(g, pa.ChunkedArray) else g)
        if pa.types.is_dictionary(uniq.type):
            uniq = uniq.dictionary_decode()
        genes.update(v for v in uniq.to_pylist() if v is not None)
        n += t.num_rows
        nonfinite += int(bad.sum())
        outside += int(out.sum())
        null_gene += nulls
    return ScanPart(n, sorted(genes), nonfinite, outside, null_gene, example)


@dataclass
class ScanResult:
    n_rows: int
    genes: list[str]


def merge_scan(parts: list[ScanPart], source: TranscriptSource) -> ScanResult:
    """Combine per-group scans; raise one clear error for the first kind of bad row found."""
    n = sum(p.n_rows for p in parts)
    problems = []
    for attr, what in (
        ("n_nonfinite", "have NaN or infinite x/y"),
        ("n_outside", "lie outside the image extent"),
        ("n_null_gene", f"have no '{K.GENE}'"),
    ):
        count = sum(getattr(p, attr) for p in parts)
        if count:
            problems.append(f"{count} transcript(s) {what}")
    if problems:
        example = next(p.example for p in parts if p.example)
        raise InputError(f"{source.url}: {'; '.join(problems)}; e.g. {example}")
    genes = sorted(set().union(*[p.genes for p in parts])) if parts else []
    return ScanResult(n, genes)


def batch_row_groups(
    groups: list[RowGroup], rows_per_batch: int = 4_000_000
) -> list[list[RowGroup]]:
    batches, cur, size = [], [], 0
    for rg in groups:
        cur.append(rg)
        size += rg.num_rows
        if size >= rows_per_batch:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    return batches

"""Vendor nuclei rebuilt from per-transcript nucleus flags, for bundles with no nucleus polygons or
masks.

Xenium's ``overlaps_nucleus`` and CosMx's ``CellComp == "Nuclear"`` say which of a vendor cell's
transcripts lie in its nucleus. Each nucleus is rebuilt as the convex hull of its cell's flagged
transcripts, grown by ``grow_um`` (default one pixel) so the hull's corner transcripts lie inside;
cells with fewer than ``min_transcripts`` flagged transcripts get none. This is how the
approximate nucleus polygons of ``xenium_breast_top`` were made (5 transcripts, one pixel), and
such hulls are smaller than the stained nucleus (transcripts are sparse near its rim).

Flagged positions are collected while the reader streams its batches (only flagged rows, three
numbers each); the polygons are built once, when the chip's ``nuclei.zarr`` is first painted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .options import Option

OPTIONS = (
    Option(
        "flag_nuclei_min_transcripts",
        5,
        "nuclei rebuilt from per-transcript nucleus flags: least flagged transcripts per cell",
    ),
    Option(
        "flag_nuclei_grow_um",
        None,
        "nuclei rebuilt from per-transcript flags: grow each hull by this (null: one pixel)",
    ),
)


class FlagNuclei:
    """Collects nucleus-flagged transcripts per vendor cell; iterates as (label, x_um, y_um)
    polygons.
    """

    def __init__(self, min_transcripts: int = 5, grow_um: float = 0.2):
        self.min_transcripts = max(int(min_transcripts), 1)
        self.grow_um = float(grow_um)
        self.reset()

    def reset(self) -> None:
        """Forget what was collected (a reader streams its batches more than once)."""
        self._parts: list[pd.DataFrame] = []
        self._polys: list | None = None

    def add(self, cell: np.ndarray, x: np.ndarray, y: np.ndarray, flagged: np.ndarray) -> None:
        """Keep the flagged transcripts of real cells (``cell`` as str or int; "", -1, 0 = none)."""
        cell = pd.Series(np.asarray(cell))
        keep = (
            np.asarray(flagged, bool)
            & ~cell.astype(str).isin(["", "0", "-1", "UNASSIGNED", "None", "nan"]).to_numpy()
        )
        if keep.any():
            self._parts.append(
                pd.DataFrame(
                    {
                        "cell": cell[keep].astype(str).to_numpy(),
                        "x": np.asarray(x, float)[keep],
                        "y": np.asarray(y, float)[keep],
                    }
                )
            )
        self._polys = None

    def polygons(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Grown convex hulls, labelled 1..n in sorted vendor-cell order."""
        if self._polys is not None:
            return self._polys
        import shapely

        self._polys = []
        if not self._parts:
            return self._polys
        df = pd.concat(self._parts, ignore_index=True)
        counts = df.groupby("cell").size()
        cells = np.sort(counts.index[counts >= self.min_transcripts].to_numpy())
        df = df[df.cell.isin(cells)]
        codes = pd.Categorical(df.cell, categories=cells).codes
        order = np.argsort(codes, kind="stable")
        pts = shapely.multipoints(
            np.c_[df.x.to_numpy()[order], df.y.to_numpy()[order]], indices=codes[order]
        )
        hulls = shapely.buffer(shapely.convex_hull(pts), self.grow_um, quad_segs=4)
        for label, hull in enumerate(hulls, start=1):
            xs, ys = np.asarray(hull.exterior.coords).T
            self._polys.append((label, xs, ys))
        return self._polys

    def __iter__(self):
        return iter(self.polygons())

    def __len__(self) -> int:
        return len(self.polygons())

    def __bool__(self) -> bool:
        return True  # a painter is registered even before the batches have been read

"""The tile partials: one tile's share of the cell table and the count matrix, as saved by the
cell pass (:func:`stseg_dist.stages.cells_tile`) and summed by
:func:`stseg_dist.outputs.reduce_cells`.

Everything in it is computed on the tile core only, so summing the partials of every tile counts
each pixel and each transcript exactly once. The saved keys (``px_*`` for pixel statistics,
``tx_*`` for count triples) are declared here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .assignment import count_triples, pixel_stats

#: Per-cell pixel statistics of the core (``assignment.pixel_stats``), saved as ``px_<name>``.
PIXEL_FIELDS = ("cell", "area", "sum_r", "sum_c", "nuc_area")
#: (cell, gene, count) of the core's assigned transcripts, saved as ``tx_<name>``.
COUNT_FIELDS = ("cell", "gene", "count")


@dataclass
class CellPartials:
    """One tile's partial sums (core only)."""

    pixels: dict[str, np.ndarray]  # PIXEL_FIELDS, one entry per cell with pixels in the core
    counts: dict[str, np.ndarray]  # COUNT_FIELDS, one entry per (cell, gene) pair
    n_transcripts: int  # transcripts owned by the core
    n_assigned: int  # of those, assigned to a cell
    seconds: float  # the tile's cell-pass time

    @classmethod
    def compute(
        cls,
        labels_core: np.ndarray,
        nuclei_core: np.ndarray,
        core_origin: tuple[int, int],
        cell_id: np.ndarray,
        gene: np.ndarray,
        n_genes: int,
        seconds: float = 0.0,
    ) -> CellPartials:
        """From the core's labels and the core's transcripts (their cell and gene)."""
        return cls(
            pixel_stats(labels_core, nuclei_core, core_origin),
            count_triples(cell_id, gene, max(1, n_genes)),
            len(cell_id),
            int((cell_id > 0).sum()),
            float(seconds),
        )

    @property
    def n_cells(self) -> int:
        return len(self.pixels["cell"])

    def to_npz(self) -> dict[str, np.ndarray]:
        return {
            **{f"px_{k}": self.pixels[k] for k in PIXEL_FIELDS},
            **{f"tx_{k}": self.counts[k] for k in COUNT_FIELDS},
            "n_transcripts": np.int64(self.n_transcripts),
            "n_assigned": np.int64(self.n_assigned),
            "seconds": np.float64(self.seconds),
        }

    @classmethod
    def from_npz(cls, d) -> CellPartials:
        return cls(
            {k: d[f"px_{k}"] for k in PIXEL_FIELDS},
            {k: d[f"tx_{k}"] for k in COUNT_FIELDS},
            int(d["n_transcripts"]),
            int(d["n_assigned"]),
            float(d["seconds"]),
        )


__all__ = ["COUNT_FIELDS", "PIXEL_FIELDS", "CellPartials"]

"""``cells.sslcst``: the SSL-CST method's settings (read by :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...settings import at_least_one, in_range, one_of, positive, require

if TYPE_CHECKING:
    from ...config import PipelineConfig


@dataclass
class SSLCSTConfig:
    bin_um: float | None = (
        None  # spot size; None: the chip's bin_um (chip.json: its spot pitch, or 1 µm)
    )
    neighbourhood: int = 5  # k: a spot's tokens are the k x k spots around it (odd)
    n_genes: int = (
        32  # expression features: the chip's most counted genes (plus the all-gene total)
    )
    erosion_bins: int = 1  # positives: spots at least this far inside a nucleus
    neg_distance_um: float = (
        8.0  # negatives: farther than this from every nucleus, empty neighbourhood
    )
    d0_um: float = 5.0  # nucleus-position prior exp(-d / d0), d to the nearest nucleus centroid
    n_directions: int = 16  # direction classes; a multiple of 4
    max_steps: int | None = (
        None  # flow-tracking steps of one spot; None: (cell - nucleus diameter) / 2 + 2 µm
    )
    in_threshold: float = 0.5  # in-cell probability at which a spot follows its directions
    d_model: int = 32
    heads: int = 4
    epochs: int = 10
    n_train_spots: int = 4096
    batch_size: int = 64  # small batches: the direction head needs steps more than samples
    lr: float = 3e-3
    augment: bool = True  # turn batches by the square's symmetries (directions turned with them)
    seed: int = 0
    # stseg (ours) | paper (Huo et al.: pre-LN blocks over all genes, positives with expression,
    # direction prior, 8-neighbour smoothing, floor binning, tracking to the nucleus centre)
    variant: str = "stseg"
    blocks: int = 8  # paper: pre-LN self-attention + residual-MLP blocks
    # paper variant's departures, each a named switch (README: their measured effect); the
    # paper variant also keeps augment and a max_steps cap (None: cell radius + 4 µm)
    top_genes_only: bool = False  # departure when True: the n_genes most counted genes (paper: all)
    step_at_bin_centre: bool = (
        True  # departure: a floor-binned class steps along its bin's centre (paper: edge)
    )
    centre_radius_um: float | None = None  # a path ends within this of a centroid; None: 1.5 spots
    # Each cell's mask closed over this radius, on empty spots only (None: 4 µm for stseg, 0 for
    # paper, whose spots stay as tracked). Tracking labels the spots the in/out head calls in, and
    # at 1 µm most spots inside a cell hold no transcript, so masks are porous; no transcript moves.
    fill_um: float | None = None

    def validate(self, key: str, root: PipelineConfig) -> None:
        one_of(self, key, "variant", ("stseg", "paper"))
        at_least_one(self, key, "blocks")
        require(
            self.fill_um is None or self.fill_um >= 0,
            f"{key}.fill_um must not be negative, got {self.fill_um}",
        )
        require(
            self.centre_radius_um is None or self.centre_radius_um > 0,
            f"{key}.centre_radius_um must be positive, got {self.centre_radius_um}",
        )
        require(
            self.bin_um is None or self.bin_um > 0,
            f"{key}.bin_um must be positive, got {self.bin_um}",
        )
        require(
            self.neighbourhood >= 3 and self.neighbourhood % 2 == 1,
            f"{key}.neighbourhood must be an odd number of spots >= 3, got {self.neighbourhood}",
        )
        require(
            self.n_directions >= 4 and self.n_directions % 4 == 0,
            f"{key}.n_directions must be a multiple of 4 (the square's turns map classes onto "
            "classes), "
            f"got {self.n_directions}",
        )
        require(self.erosion_bins >= 0, f"{key}.erosion_bins must be >= 0, got {self.erosion_bins}")
        positive(self, key, "neg_distance_um", "d0_um", "lr")
        in_range(self, key, "in_threshold", "(0, 1)")
        at_least_one(
            self, key, "n_genes", "epochs", "n_train_spots", "batch_size", "d_model", "heads"
        )
        require(
            self.d_model % self.heads == 0,
            f"{key}.d_model ({self.d_model}) must be a multiple of {key}.heads ({self.heads})",
        )
        require(
            self.max_steps is None or self.max_steps >= 1,
            f"{key}.max_steps must be at least 1, got {self.max_steps}",
        )

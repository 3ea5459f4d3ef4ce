"""``cells.ucs``: the UCS method's settings (read by :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...settings import in_range, one_of, positive, require

if TYPE_CHECKING:
    from ...config import PipelineConfig


@dataclass
class UCSConfig:
    # "paper": the published method (reference-size nets, the paper's labels, inference rule,
    # optimiser and soft-mask tau 5; no missing cells) to measure every departure against.
    # "stseg": ours, with the departures below (each a switch with its measured effect).
    variant: str = "stseg"
    bin_um: float | None = None  # None: the chip's bin_um (chip.json: its spot pitch, or 1 µm)
    n_hvg: int = 1000
    hvg_region_um: float = 1000.0  # HVGs are chosen per square region of this size
    patch_px: int = 48
    tau: float = 3.0  # bins; 5 covers cells whose nucleus is unseen, 2 cuts big cells short
    epochs: int = 20  # at most, per network: each stops earlier on a loss plateau
    # A network stops when its last plateau_patience epochs improved its best loss by less than
    # plateau_tol of it (patience 0: always the full epochs).
    plateau_patience: int = 3
    plateau_tol: float = 0.01
    n_train_patches: int = 256
    batch_size: int = 16
    lr: float = 1e-3  # the paper's 1e-4 needs far more steps than an on-chip fit affords
    weight_decay: float = 1e-4
    pos_weight: float | None = None  # None: 5 where the chip's spot_capture is true, else 1
    missing_cells: bool = True
    # Nucleus-less cells are sought where the foreground, smoothed by a Gaussian of
    # missing_cell_smoothing_um, exceeds missing_cell_threshold outside every cell (0 / 0.95 before:
    # the trained net's speckle broke real cell bodies apart, so finding one hung on the seed).
    missing_cell_threshold: float = 0.85
    missing_cell_smoothing_um: float = 0.5
    # A nucleus-less cell must be this far from the chip's background density towards its nuclei's
    # (0: any confident foreground will do, as before).
    missing_cell_density: float = 1.0
    foreground_threshold: float = 0.5  # bins below it never join a cell (0.5: the net's argmax)
    # "threshold": a bin joins a cell only where the foreground net says p >= foreground_threshold.
    # "evidence": only transcripts that look like background keep a bin out: the threshold is at
    # most the net's p for a bin with no transcript in its receptive field, so where there is no
    # evidence at all the soft mask and growth_um decide (with "threshold" that choice falls to
    # whichever side of the threshold the trained net's empty-field p happens to lie).
    foreground_gate: str = "threshold"
    background_dilation: int = 4  # iterations of the 10x10 dilation around nuclei before background
    # Foreground training labels beyond the paper's (background only far from nuclei, which dense
    # tissue never reaches): "chip": gaps at or below the chip's own background density are
    # background, cytoplasm next to a nucleus clearly above it cell; "nuclei": the same against
    # background_density times the nuclei's density (also "chip"'s fallback where too few bins lie
    # far from every nucleus to measure a background); "paper": the published rule alone.
    foreground_labels: str = "chip"
    background_density: float = 0.25
    background_sigma_um: float = 1.5  # smoothing of the counts for that rule
    scaled_softmask: bool = True
    # The cell net also sees each cell's expression profile (its features averaged over its
    # nucleus), beyond the paper: between two nuclei, a bin goes to the one it resembles. Off by
    # default: on generated chips it moved F1 by -0.002 and right-cell by +0.004 at 1.6x the
    # inference time.
    expression_profile: bool = False
    # The paper's background (mean over the cells in reach of 1 - q) also decides cell or not;
    # false: the foreground net alone does, the cell net only says which cell.
    cell_background: bool = False
    # Where cells compete for a bin, add this times the evidence that their nucleus's expression
    # explains the transcripts there (log-likelihood ratio vs the chip average); 0: distance alone.
    expression_weight: float = 1.0
    # How far a cell may extend beyond its nucleus outline; None: (cells.cell_diameter_um -
    # nuclei.diameter_um) / 2 + 2 µm (a typical cytoplasm and some slack).
    growth_um: float | None = None
    markers: str | None = None  # table of cell types and marker genes
    # One knob along UCS's own coverage curve (off: null): the share of the chip's transcripts its
    # cells may reach. Resolved from the chip into growth_um (the distance from the nuclei that
    # holds this share, at most cells.cell_diameter_um) and a foreground gate relaxed in step (as
    # set at the share the default growth holds, none at 1.0); bins a cell wins but loses as a
    # piece cut off from its nucleus go to the nearest cell. 1.0 reaches the vendor's coverage on
    # xenium_breast_top (docs/accuracy_frontier.md). Off by default: lowers F1/ARI on CosMx. With
    # it the spillover pass runs unless cells.spillover.enabled is false (stseg_dist/spillover.py).
    coverage: float | None = None
    seed: int = 0

    def validate(self, key: str, root: PipelineConfig) -> None:
        require(
            self.coverage is None or 0 < self.coverage <= 1,
            f"{key}.coverage must be in (0, 1] or null, got {self.coverage}",
        )
        require(self.patch_px >= 8, f"{key}.patch_px must be at least 8 bins, got {self.patch_px}")
        require(
            self.growth_um is None or self.growth_um > 0,
            f"{key}.growth_um must be positive or null, got {self.growth_um}",
        )
        positive(self, key, "tau")
        require(
            self.bin_um is None or self.bin_um > 0,
            f"{key}.bin_um must be positive, got {self.bin_um}",
        )
        in_range(self, key, "foreground_threshold", "[0, 1)")
        one_of(self, key, "foreground_gate", ("threshold", "evidence"))
        require(
            self.expression_weight >= 0,
            f"{key}.expression_weight must not be negative, got {self.expression_weight}",
        )
        in_range(self, key, "missing_cell_density", "[0, 1]")
        in_range(self, key, "missing_cell_threshold", "(0, 1]")
        require(
            self.missing_cell_smoothing_um >= 0,
            f"{key}.missing_cell_smoothing_um must not be negative, got "
            f"{self.missing_cell_smoothing_um}",
        )
        one_of(self, key, "foreground_labels", ("paper", "nuclei", "chip"))
        in_range(self, key, "background_density", "(0, 1)")
        positive(self, key, "background_sigma_um")
        one_of(self, key, "variant", ("paper", "stseg"))
        require(
            min(self.epochs, self.batch_size, self.n_train_patches) >= 1,
            f"{key}.epochs, batch_size and n_train_patches must be at least 1",
        )
        require(
            self.plateau_patience >= 0,
            f"{key}.plateau_patience must not be negative, got {self.plateau_patience}",
        )
        in_range(self, key, "plateau_tol", "[0, 1)")

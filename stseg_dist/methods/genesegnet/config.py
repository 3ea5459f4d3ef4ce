"""``cells.genesegnet``: the GeneSegNet method's settings (read by :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...settings import at_least_one, in_range, one_of, positive, require

if TYPE_CHECKING:
    from ...config import PipelineConfig


@dataclass
class GeneSegNetConfig:
    # "stseg": a 3-level U-Net, cells by nearest nucleus centroid to a bin's offset landing, labels
    # relabelled between rounds, flips only, log RNA map. "paper": GeneSegNet as published (Wang et
    # al. 2023): the RNA map clipped at rna_clip, a centre map head (bins follow their offsets to
    # predicted centres matched to nuclei), a level set on each mask between rounds, scale/rotate/
    # crop augmentation, a 4-scale U-Net of pre-activation residual blocks. The switches below
    # (paper variant only) turn each part off: a named departure.
    variant: str = "stseg"
    rna_clip: float = 1.0  # paper: the Gaussian sum clipped at this value (the network's RNA input)
    centre_map: bool = (
        True  # false: the stseg assignment (nearest nucleus centroid), no centre head
    )
    centre_sigma_um: float = (
        1.5  # centre map target: a Gaussian of this sigma at each nucleus centre
    )
    centre_threshold: float = (
        0.3  # a predicted centre: a local maximum of the centre map above this
    )
    centre_fallback: bool = (
        True  # departure: a nucleus no predicted centre matches keeps its centroid
    )
    level_set: str = "chan_vese"  # chan_vese | geodesic | none (departure: relabel only)
    level_set_iters: int = 10
    augment: str = "scale_rotate_crop"  # | flip (departure)
    scale_min: float = 0.75  # augmentation zoom range
    scale_max: float = 1.25
    net: str = "resunet4"  # resunet4 (paper) | unet3 (departure)
    bin_um: float = 1.0  # the U-Net's pixel: image blocks of about this size, anchored to the chip
    patch_px: int = 48  # training patch and inference window side, in bins; a multiple of 8
    rna_sigma_um: float = 1.5  # Gaussian kernel of the RNA location map
    init_expand_um: float = 4.0  # round-1 labels: nuclei expanded by this much
    n_train_patches: int = 128
    epochs: int = 8  # per refinement round
    max_rounds: int = 4
    agree_iou: float = 0.93  # stop refining once consecutive rounds' labels agree this well
    batch_size: int = 8
    lr: float = 2e-3
    width: int = 16  # channels of the U-Net's first level
    prob_threshold: float = 0.5
    seed: int = 0

    def validate(self, key: str, root: PipelineConfig) -> None:
        positive(self, key, "bin_um", "rna_sigma_um", "lr")
        require(
            self.init_expand_um >= 0,
            f"{key}.init_expand_um must be zero or more, got {self.init_expand_um}",
        )
        at_least_one(self, key, "epochs", "max_rounds", "n_train_patches", "batch_size", "width")
        in_range(self, key, "agree_iou", "(0, 1]")
        in_range(self, key, "prob_threshold", "(0, 1)")
        one_of(self, key, "variant", ("stseg", "paper"))
        one_of(self, key, "level_set", ("chan_vese", "geodesic", "none"))
        one_of(self, key, "augment", ("scale_rotate_crop", "flip"))
        one_of(self, key, "net", ("resunet4", "unet3"))
        positive(self, key, "rna_clip", "centre_sigma_um", "scale_min")
        in_range(self, key, "centre_threshold", "(0, 1)")
        at_least_one(self, key, "level_set_iters")
        require(
            self.scale_max >= self.scale_min,
            f"{key}.scale_max must be at least scale_min ({self.scale_min}), got {self.scale_max}",
        )

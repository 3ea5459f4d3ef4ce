"""GeneSegNet (Wang et al., Genome Biology 2023): stain + RNA location map U-Net, refined labels.

``variant: stseg`` (default) and ``variant: paper`` (clipped RNA map, centre map head, level-set
refinement, scale/rotate/crop augmentation, residual 4-scale U-Net; README: their measured effect).
"""

from .method import GeneSegNetMethod

__all__ = ["GeneSegNetMethod"]

"""GeneSegNet (Wang et al., Genome Biology 2023): stain + RNA location map U-Net, refined labels."""

from .method import GeneSegNetMethod

__all__ = ["GeneSegNetMethod"]

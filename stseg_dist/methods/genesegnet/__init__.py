"""GeneSegNet (Wang et al., Genome Biology 2023): stain + RNA location map U-Net, refined labels.

``variant: stseg`` (default) and ``variant: paper`` (clipped RNA map, centre map head, level-set
refinement, scale/rotate/crop augmentation, residual 4-scale U-Net; README: their measured effect).
"""

from .config import GeneSegNetConfig


def __getattr__(name: str):
    """The method class on first use: importing the settings (``GeneSegNetConfig``) stays light."""
    if name == "GeneSegNetMethod":
        from .method import GeneSegNetMethod

        return GeneSegNetMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GeneSegNetConfig", "GeneSegNetMethod"]

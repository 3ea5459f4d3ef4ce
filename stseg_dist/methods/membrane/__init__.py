"""Membrane-stain cell segmentation (STCellbin): registration, classical or Cellpose cells."""

from .config import MembraneConfig


def __getattr__(name: str):
    """The method class on first use: importing the settings (``MembraneConfig``) stays light."""
    if name == "MembraneMethod":
        from .method import MembraneMethod

        return MembraneMethod
    if name == "PaperMembraneMethod":
        from .paper_method import PaperMembraneMethod

        return PaperMembraneMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MembraneConfig", "MembraneMethod", "PaperMembraneMethod"]

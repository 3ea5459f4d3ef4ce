"""Membrane-stain cell segmentation (STCellbin): registration, classical or Cellpose cells."""

from .method import MembraneMethod

__all__ = ["MembraneMethod"]

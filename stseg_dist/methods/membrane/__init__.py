"""Membrane-stain cell segmentation (STCellbin): registration, classical or Cellpose cells."""

from .method import MembraneMethod
from .paper_method import PaperMembraneMethod

__all__ = ["MembraneMethod", "PaperMembraneMethod"]

"""UCS (Chen et al., Small Methods 2025): foreground and cell networks trained on the chip itself."""

from .method import UCSMethod

__all__ = ["UCSMethod"]

"""UCS (Chen et al., Small Methods 2025): foreground and cell networks trained on the chip
itself.
"""

from .config import UCSConfig


def __getattr__(name: str):
    """The method class on first use: importing the settings (``UCSConfig``) stays light."""
    if name == "UCSMethod":
        from .method import UCSMethod

        return UCSMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["UCSConfig", "UCSMethod"]

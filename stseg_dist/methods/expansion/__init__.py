"""Nucleus expansion, the Xenium Ranger baseline: each pixel within ``distance_um`` of a nucleus
joins the nearest one.
"""

from .config import ExpansionConfig


def __getattr__(name: str):
    """The method class on first use: importing the settings (``ExpansionConfig``) stays light."""
    if name == "ExpansionMethod":
        from .method import ExpansionMethod

        return ExpansionMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExpansionConfig", "ExpansionMethod"]

"""Metrics against references (label masks, per-transcript IDs, generated truth)."""

from .evaluate import evaluate, format_table

__all__ = ["evaluate", "format_table"]

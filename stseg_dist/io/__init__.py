"""Reading and writing chips: the canonical layout and, in per-vendor modules, instrument
bundles.
"""

from .chip import Chip, ChipMeta, ImageSpec, open_chip
from .chip_writer import ChipWriter
from .transcripts import TranscriptSource

__all__ = ["Chip", "ChipMeta", "ChipWriter", "ImageSpec", "TranscriptSource", "open_chip"]

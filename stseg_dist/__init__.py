"""stseg-dist: Ray-distributed cell segmentation for subcellular spatial transcriptomics.

Heavy dependencies (ray, torch, cellpose) are imported only where a stage needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["open_chip", "load_config", "run_pipeline", "synth_chip", "__version__"]


def __getattr__(name: str):
    if name == "open_chip":
        from .io.chip import open_chip

        return open_chip
    if name == "load_config":
        from .config import load_config

        return load_config
    if name == "run_pipeline":
        from .driver import run_pipeline

        return run_pipeline
    if name == "synth_chip":
        from .synth import synth_chip

        return synth_chip
    raise AttributeError(f"module 'stseg_dist' has no attribute {name!r}")

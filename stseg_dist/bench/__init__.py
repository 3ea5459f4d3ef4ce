"""Benchmarks behind ``stseg bench``: one place for a new one.

- ``pipeline``: throughput and memory of the whole pipeline on generated chips (the default);
- ``comparison``: cell methods side by side on generated chips and shared real crops
  (``--methods``);
- ``stseg_dist.export.bench``: time and memory of the run exports (``--exports``).

Nothing here asserts a time.
"""

from .pipeline import main, run_bench

__all__ = ["main", "run_bench"]

"""Image helpers shared by the nuclei backends and the cell methods (smoothing, Cellpose models).

This package sits below both :mod:`stseg_dist.nuclei` and :mod:`stseg_dist.methods` and imports
neither, so the two never depend on each other.
"""

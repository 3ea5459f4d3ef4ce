"""Filters of a stain image, shared by the nuclei backends and the cell methods."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing in float32 (truncated at 4 sigma, so its reach is bounded)."""
    return ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma_px, truncate=4.0)

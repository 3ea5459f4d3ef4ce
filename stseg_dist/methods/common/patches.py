"""Training patches centred on nuclei: which nuclei, and the box each patch is cut from.

The nuclei are drawn once, chip-wide, by global ID; each tile then cuts the patches of the drawn
nuclei it owns (:func:`~.ownership.owned_nuclei`), so the training set is the same whatever the
tiling.
"""

from __future__ import annotations

import numpy as np


def sample_nuclei(seed: int, n_nuclei: int, n: int) -> np.ndarray:
    """``min(n, n_nuclei)`` of the global nucleus IDs 1..n_nuclei, drawn without replacement,
    sorted.
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.arange(1, n_nuclei + 1), size=min(n, n_nuclei), replace=False))


def patch_box(
    centre_r: int, centre_c: int, size: int, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The ``size`` x ``size`` box (r0, r1, c0, c1) centred on a bin, moved inside the window;
    cut short where the window itself is smaller (see :func:`cut_patch`).
    """
    h, w = shape
    r0 = min(max(0, centre_r - size // 2), max(0, h - size))
    c0 = min(max(0, centre_c - size // 2), max(0, w - size))
    return r0, min(h, r0 + size), c0, min(w, c0 + size)


def cut_patch(array: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A box of a window array as a ``size`` x ``size`` patch, zero-padded where the box is
    short.
    """
    r0, r1, c0, c1 = box
    out = np.zeros((size, size), array.dtype)
    out[: r1 - r0, : c1 - c0] = array[r0:r1, c0:c1]
    return out

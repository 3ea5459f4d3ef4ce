"""Vendor nuclei: the labels shipped with the data (``nuclei.zarr``), read window by window."""

from __future__ import annotations

from ..errors import InputError
from .base import NucleiBackend


class VendorNuclei(NucleiBackend):
    name = "vendor"

    def __init__(self, config, chip):
        super().__init__(config, chip)
        if chip.nuclei_url is None:
            raise InputError(
                f"{chip.url}: nuclei.backend=vendor needs nuclei.zarr in the chip, and it has none"
            )

    def segment(self, tile):
        rows, cols = tile.window_slices
        return self.chip.read_nuclei(rows, cols)

"""The toolkit the learned cell methods (UCS, GeneSegNet, SSL-CST) and the model-backed ones share.

- :mod:`.bins`: the chip-anchored bin grid (:class:`BinGrid`) and a tile window binned onto it
  (:class:`BinnedTile`, :func:`bin_tile`): what makes every method's features tile-invariant.
- :mod:`.ownership`: which tile owns a nucleus, a bin or a pixel (the stitching rule: the core
  holding its centroid or centre pixel), and exact nucleus centroids.
- :mod:`.patches`: the nuclei a method trains on and the box of each training patch.
- :mod:`.torch_model`: device choice, the CPU thread rule, the minibatch loop, weights as bytes
  loaded with ``weights_only=True``, and :class:`TorchMethod` (``load``, ``describe_state``).

A method package keeps what is its own (its features, network, labels and inference); anything
a second method would write again belongs here; what the nuclei backends share too (the Cellpose
loader, smoothing) is in :mod:`stseg_dist.imaging`, below both.
"""

from .bins import BinGrid, BinnedTile, bin_size_um, bin_tile
from .ownership import centroid_pixels, nucleus_centroids, owned_nuclei, tile_owning
from .patches import cut_patch, patch_box, sample_nuclei

__all__ = [
    "BinGrid",
    "BinnedTile",
    "bin_size_um",
    "bin_tile",
    "centroid_pixels",
    "cut_patch",
    "nucleus_centroids",
    "owned_nuclei",
    "patch_box",
    "sample_nuclei",
    "tile_owning",
]

"""Seamless stitching: ownership by centroid, global IDs by position, painting from neighbours.

No label matching across tile borders is needed: each object is segmented whole inside the
halo of the tile that owns it, given one chip-wide ID, and painted into every window it
touches. Cells are grown from these global nuclei, so they carry the same IDs in every tile.
"""

from .global_ids import assign_global_ids
from .ownership import OwnedObjects, owned_objects
from .paint import paint_window

__all__ = ["OwnedObjects", "assign_global_ids", "owned_objects", "paint_window"]

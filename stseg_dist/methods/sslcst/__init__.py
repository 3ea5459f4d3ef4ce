"""SSL-CST (Huo et al., AAAI 2026): self-supervised per-spot classification for cell segmentation.

Pipeline, per the issue (#8) that specifies it here:

1. Spots are the UCS bins (``bin_um``; the chip's, 1 µm or its finer spot pitch), anchored to
   the chip origin. The chip's ``n_genes`` most counted genes (plus the all-gene total) are the
   expression features.
2. Self-supervised labels: spots ``erosion_bins`` inside a nucleus are positive, with the
   16-way direction to that nucleus's centroid; spots farther than ``neg_distance_um`` from every
   nucleus with no transcript in their ``k x k`` neighbourhood are negative; the rest unlabelled.
   ``n_train_spots`` are drawn chip-wide by a hash of the global spot, balanced in/out.
3. Encoder (``model.py``): tokens are the ``k x k`` spots around a spot (log1p counts, the
   nucleus-position prior ``exp(-d/d0)`` of the distance to the nearest centroid, and the
   token's position normalised within the neighbourhood); one multi-head self-attention block,
   then an MLP with an in/out head and a direction head. Trained on the chip in a Ray GPU task
   when the cluster has a GPU, else in-process on CPU; seeded.
4. Cells: each spot predicted in-cell follows the predicted directions one spot per step
   (gradient-flow tracking) until it stands on a nucleus, whose global ID it takes, or
   ``max_steps`` run out (then it stays unassigned). Nuclei keep their own IDs. The default budget
   is about half the gap between cell and nucleus diameters: the in/out head, taught only by
   nucleus interiors and empty background, does not stop cells at their neighbours, the budget does.

Choices the issue leaves open: negatives need an empty neighbourhood (not just an empty spot),
since a single empty 1 µm spot is common inside cells; the prior is cut off at the method's
reach so features never depend on where a tile ends; training turns each batch by a symmetry of
the square (directions turned with it). Cells with no visible nucleus are not found.

``variant: paper`` (issue #18) is the method as Huo et al. specify it: ``blocks`` (8) pre-LN
attention + residual-MLP blocks over every gene; positives only where the eroded nucleus has
expression; directions floor-binned; at inference a direction prior zeroes the classes with no
nucleus centroid within reach and renormalises, the expected direction is averaged over each
spot and its 8 neighbours, and paths run through nuclei to a nucleus centre
(``features.direction_mask``, ``features.centre_map``, ``SSLCSTMethod._segment_paper``). Its
departures are switches: ``top_genes_only``, ``step_at_bin_centre``, ``centre_radius_um``, and
the ``max_steps`` cap that keeps the halo bounded (tiles exact).
"""

from .config import SSLCSTConfig


def __getattr__(name: str):
    """The method class on first use: importing the settings (``SSLCSTConfig``) stays light."""
    if name == "SSLCSTMethod":
        from .method import SSLCSTMethod

        return SSLCSTMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SSLCSTConfig", "SSLCSTMethod"]

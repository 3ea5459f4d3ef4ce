"""Open a stseg SpatialData store with the scverse stack pinned in requirements.txt.

Run by tests/outputs/test_ecosystem.py with the compat venv's python (``make compat-venv``):
``python check_store.py STORE PNG``. Prints one JSON object with what each library saw; the
test asserts on it. Nothing here imports stseg_dist: the store must stand on its own.
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib import metadata

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np


def main(store: str, png: str) -> dict:
    warnings.filterwarnings("ignore")
    import sopa
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sopa.settings.auto_save_on_disk = False  # read only: sopa would write its results back
    sdata = sd.read_zarr(store)
    out = {
        "versions": {
            p: metadata.version(p) for p in ("spatialdata", "sopa", "spatialdata-plot", "dask")
        },
        "elements": sorted(f"{kind}/{name}" for kind, name, _ in sdata.gen_elements()),
        "channels": [str(c) for c in sdata["image"]["scale0"]["image"].c.values]
        if "scale0" in getattr(sdata["image"], "children", {})
        else [str(c) for c in sdata["image"].c.values],
    }

    # sopa finds the image, the cell boundaries and the transcripts by its own keys (sdata.attrs)
    image = sopa.utils.get_spatial_image(sdata)
    out["sopa_image_shape"] = list(image.shape)
    out["sopa_channels"] = list(map(str, sopa.utils.get_channel_names(sdata)))
    key, cells = sopa.utils.get_boundaries(sdata, return_key=True)
    out["sopa_boundaries"] = [key, len(cells)]
    ids = [int(i) for i in cells.index]  # our cell_id (sopa renames the index in place)
    out["sopa_feature_key"] = sopa.utils.get_feature_key(
        sdata[sdata.attrs["transcripts_dataframe"]]
    )
    # and recounts transcripts per cell from the points and the shapes
    sopa.aggregate(sdata, aggregate_channels=False, min_transcripts=0, key_added="sopa_table")
    ours = sdata["table"]
    theirs = sdata["sopa_table"]
    mine = dict(
        zip(ours.obs["cell_id"].astype(int), np.asarray(ours.X.sum(1)).ravel(), strict=True)
    )
    sums = np.asarray(theirs.X.sum(1)).ravel()
    # sopa's rows follow the shapes, under its own cell names
    diffs = [abs(float(s) - float(mine.get(int(i), 0))) for i, s in zip(ids, sums, strict=False)]
    out["sopa_obs"] = sorted(theirs.obs.columns)
    out["sopa_aggregate"] = {
        "n_cells": int(theirs.n_obs),
        "total": float(sums.sum()),
        "ours_total": float(np.asarray(ours.X.sum())),
        "cells_equal_share": float(np.mean([d == 0 for d in diffs])) if diffs else 0.0,
    }

    # spatialdata-plot colours the cell label raster by a table column
    fig, ax = plt.subplots(figsize=(4, 4))
    sdata.pl.render_labels(
        "cell_labels", color="n_transcripts", table_name="cell_labels_table"
    ).pl.show(ax=ax, coordinate_systems="global")
    fig.canvas.draw()
    fig.savefig(png, dpi=80)
    # the label layer as drawn (RGBA per pixel): one colour per value of n_transcripts
    layer = np.asarray(ax.get_images()[0].get_array())
    pixels = layer.reshape(-1, layer.shape[-1])
    drawn = pixels[pixels[:, -1] > 0] if layer.ndim == 3 else pixels
    out["plot_layer_shape"] = list(layer.shape)
    out["plot_distinct_colours"] = len({tuple(np.round(p, 3)) for p in drawn.tolist()})
    out["table_distinct_values"] = int(sdata["cell_labels_table"].obs["n_transcripts"].nunique())
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

"""The spillover pass: which transcripts move, that it is tile-exact, and its bad settings."""

import json

import numpy as np
import pandas as pd
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.spillover import SpilloverConfig, reassign


def test_a_neighbours_gene_near_the_border_moves_to_it():
    """Cells 1 (left, nucleus of gene 0) and 2 (right, nucleus of gene 1) meet at column 10."""
    labels = np.zeros((10, 20), np.uint32)
    labels[:, :10], labels[:, 10:] = 1, 2
    nuclei = np.zeros_like(labels)
    nuclei[3:7, 2:5], nuclei[3:7, 15:18] = 1, 2
    rows = [4] * 8 + [5, 5, 5, 5]
    cols = [3] * 4 + [16] * 4 + [9, 9, 3, 1]
    genes = [0] * 4 + [1] * 4 + [1, 0, 1, 1]
    # gene 1 at the border in cell 1: moves; gene 0 there: stays; gene 1 on cell 1's own
    # nucleus: stays; gene 1 far from cell 2 (column 1, 8 px away): stays
    cell = labels[rows, cols].astype(np.int64)
    cfg = SpilloverConfig(enabled=True, reach_um=1.0, min_ratio=3.0, prior_counts=1.0)
    got, moved = reassign(
        labels, nuclei, None, np.array(rows), np.array(cols), np.array(genes), cell, 2, 0.5, cfg
    )
    assert moved.tolist() == [False] * 8 + [True, False, False, False]
    assert got[8] == 2 and (got[9:] == 1).all()
    # a stricter ratio keeps it: 1 / (4 + 1) pseudo-count vs (4 + 0.5) / 5: a ratio of 9
    strict = SpilloverConfig(enabled=True, reach_um=1.0, min_ratio=10.0, prior_counts=1.0)
    assert not reassign(
        labels, nuclei, None, np.array(rows), np.array(cols), np.array(genes), cell, 2, 0.5, strict
    )[1].any()


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("cells.spillover.reach_um=0", "reach_um must be positive"),
        ("cells.spillover.reach_um=30", "must not exceed nuclei.diameter_um"),
        ("cells.spillover.min_ratio=0.5", "min_ratio must be at least 1"),
        ("cells.spillover.prior_counts=0", "prior_counts must be positive"),
    ],
)
def test_bad_spillover_settings(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(
            overrides=parse_set(["cells.spillover.enabled=true", item]), use_env=False
        ).validate()


def test_spillover_is_tile_exact_and_counted(tmp_path):
    """Expansion + spillover on a generated chip with cell types: the same transcripts move at
    every tiling, run.json counts them, and the cells' counts follow the moves.
    """
    from stseg_dist.synth import synth_chip
    from tests.test_tile_invariance import _same_at_every_tiling

    chip = str(tmp_path / "chip")
    synth_chip(chip, 100, 100, seed=5, vendor_nuclei=True)
    one = _same_at_every_tiling(
        chip, tmp_path, [24, 44], "nuclei.backend=vendor", "cells.spillover.enabled=true"
    )
    tx = pd.read_parquet(one / "transcripts.parquet")
    n_moved = int(tx.spillover_moved.sum())
    assert n_moved > 0
    assert json.loads((one / "run.json").read_text())["counts"]["n_spillover_moved"] == n_moved
    cells = pd.read_parquet(one / "cells.parquet").set_index("cell_id")
    per_cell = tx[tx.cell_id > 0].groupby("cell_id").size()
    assert (cells.n_transcripts.reindex(per_cell.index) == per_cell).all()

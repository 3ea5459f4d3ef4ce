"""The generated chip: layout, truth consistency, determinism, streaming layout, bad arguments."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from stseg_dist.errors import ConfigError, OutputError
from stseg_dist.io.chip import open_chip
from stseg_dist.synth import synth_chip


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "chip"
    info = synth_chip(str(out), 300, 260, seed=3, membrane=True, vendor_nuclei=True, block_um=100)
    return out, info


def test_layout_and_truth(chip):
    out, info = chip
    c = open_chip(str(out))
    assert c.image_shape == (2, 520, 600) and c.pixel_size_um == 0.5 and c.nuclei_url
    cells = zarr.open_array(str(out / "truth" / "cells.zarr"))[:]
    nuclei = zarr.open_array(str(out / "truth" / "nuclei.zarr"))[:]
    truth = pd.read_parquet(out / "truth" / "cells.parquet")
    tx = pq.read_table(out / "transcripts.parquet").to_pandas()
    assert len(tx) == info["n_transcripts"] and tx.transcript_id.is_unique
    assert set(tx.columns) >= {"x", "y", "z", "gene", "qv", "transcript_id", "cell_true"}
    # nuclei lie inside their own cell, and are smaller than it
    assert ((nuclei == 0) | (cells == nuclei)).all()
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    nid, ncount = np.unique(nuclei[nuclei > 0], return_counts=True)
    ratio = ncount / counts[np.searchsorted(ids, nid)]
    assert (ratio <= 1).all() and np.median(ratio) < 0.5
    # missing nuclei: cells in the truth with no visible nucleus
    missing = truth.cell_id[~truth.has_visible_nucleus]
    assert len(missing) >= 1 and not np.isin(missing, nid).any()
    assert set(truth.cell_id) == set(ids)
    # most cell transcripts lie in their own cell; the rest diffused; some background
    r, col = np.floor(tx.y / 0.5).astype(int), np.floor(tx.x / 0.5).astype(int)
    own = tx.cell_true > 0
    frac = (cells[r, col] == tx.cell_true)[own].mean()
    assert 0.85 < frac < 0.99
    assert 0.03 < (~own).mean() < 0.12
    nuclear = (nuclei[r, col] == tx.cell_true)[own].mean()
    assert 0.1 < nuclear < 0.6
    # several cell types with distinct programs: the top gene differs between types
    tx = tx[own].merge(truth[["cell_id", "cell_type"]], left_on="cell_true", right_on="cell_id")
    top = tx.groupby("cell_type").gene.agg(lambda g: g.value_counts().index[0])
    assert truth.cell_type.nunique() >= 4 and top.nunique() == len(top)
    assert truth.elongated.any() and (~truth.elongated).any()
    # the vendor nuclei are the visible true nuclei
    np.testing.assert_array_equal(zarr.open_array(str(out / "nuclei.zarr"))[:], nuclei)


def test_row_groups_are_spatially_local(chip):
    out, _ = chip
    src = open_chip(str(out)).transcripts
    assert len(src.row_groups) >= 9
    for rg in src.row_groups:
        # a block plus the reach of the cells it owns: far smaller than the 300 µm chip
        assert rg.x_max - rg.x_min <= 140 and rg.y_max - rg.y_min <= 140


def test_deterministic_and_seamless(tmp_path):
    a = synth_chip(str(tmp_path / "a"), 150, 120, seed=5, block_um=50)
    synth_chip(str(tmp_path / "b"), 150, 120, seed=5, block_um=50)
    synth_chip(str(tmp_path / "c"), 150, 120, seed=6, block_um=50)
    synth_chip(str(tmp_path / "d"), 150, 120, seed=5, block_um=150)  # other blocks, same truth
    za = zarr.open_array(str(tmp_path / "a" / "truth" / "cells.zarr"))[:]
    np.testing.assert_array_equal(
        za, zarr.open_array(str(tmp_path / "b" / "truth" / "cells.zarr"))[:]
    )
    np.testing.assert_array_equal(
        za, zarr.open_array(str(tmp_path / "d" / "truth" / "cells.zarr"))[:]
    )
    assert not np.array_equal(za, zarr.open_array(str(tmp_path / "c" / "truth" / "cells.zarr"))[:])
    ta = pd.read_parquet(tmp_path / "a" / "transcripts.parquet")
    pd.testing.assert_frame_equal(ta, pd.read_parquet(tmp_path / "b" / "transcripts.parquet"))
    assert a["n_cells"] > 50


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"width_um": 0}, "width_um must be positive"),
        ({"pixel_size_um": -1}, "pixel_size_um must be positive"),
        ({"height_um": float("nan")}, "height_um must be a finite number"),
        ({"n_genes": 1}, "n_genes"),
        ({"n_cell_types": 0}, "n_cell_types"),
        ({"seed": -1}, "seed"),
        ({"background_fraction": 1.0}, "background_fraction"),
        ({"occupancy": 0}, "occupancy"),
        ({"occupancy": 1.5}, "occupancy"),
        ({"cytoplasm_keep": 2.0}, "cytoplasm_keep"),
        ({"expression_cv": -0.1}, "expression_cv"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, fragment):
    args = {"width_um": 50, "height_um": 50, **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        synth_chip(str(tmp_path / "x"), args.pop("width_um"), args.pop("height_um"), **args)


def test_hard_tissue_is_sparser_and_uneven(tmp_path):
    """The hard preset leaves gaps, thins cytoplasm, adds free RNA and varies expression
    smoothly.
    """
    from stseg_dist.synth import HARD

    def stats(chip, **kw):
        info = synth_chip(str(tmp_path / chip), 240, 240, seed=5, **kw)
        tx = pq.read_table(tmp_path / chip / "transcripts.parquet").to_pandas()
        truth = pd.read_parquet(tmp_path / chip / "truth" / "cells.parquet")
        nuclei = zarr.open_array(str(tmp_path / chip / "truth" / "nuclei.zarr"))[:]
        r, c = (tx.y / 0.5).astype(int).clip(0, 479), (tx.x / 0.5).astype(int).clip(0, 479)
        in_cell = tx.cell_true > 0
        nuclear = (nuclei[r, c] == tx.cell_true) & in_cell
        per_cell = tx[in_cell].groupby("cell_true").size() / truth.set_index("cell_id").area_um2
        return (
            info,
            (~in_cell).mean(),
            nuclear.sum() / in_cell.sum(),
            per_cell.std() / per_cell.mean(),
        )

    easy, bg_easy, nuc_easy, cv_easy = stats("easy")
    hard, bg_hard, nuc_hard, cv_hard = stats("hard", **HARD)
    assert (
        hard["n_cells"] < 0.85 * easy["n_cells"]
    )  # gaps: 70% of lattice points hold a cell, not 90%
    assert bg_hard > 2 * bg_easy and bg_hard == pytest.approx(HARD["background_fraction"], abs=0.03)
    assert nuc_hard > nuc_easy + 0.1  # the cytoplasm lost half its transcripts, the nucleus none
    assert cv_hard > cv_easy + 0.1  # transcripts per µm² vary from cell to cell far more


def test_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("keep")
    with pytest.raises(OutputError, match="not empty"):
        synth_chip(str(tmp_path / "x"), 50, 50)
    assert (tmp_path / "x" / "keep.txt").read_text() == "keep"

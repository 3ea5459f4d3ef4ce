"""evaluate() on hand-built OUT folders and on a real local run of a generated chip."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from stseg_dist.errors import InputError
from stseg_dist.evaluation import evaluate, format_table


def _write_out(out, cells_lab, tx_cell, attrs=None):
    out.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(out / "labels.zarr"), mode="w")
    g.attrs.update(attrs or {"pixel_size_um": 1.0, "origin_um": [0.0, 0.0]})
    for name in ("cells", "nuclei"):
        a = g.create_array(name, shape=cells_lab.shape, chunks=(4, 4), dtype="uint32")
        a[:] = cells_lab
    ids = [i for i in np.unique(cells_lab) if i]
    pd.DataFrame(
        {
            "cell_id": np.array(ids, np.int64),
            "x": 0.0,
            "y": 0.0,
            "area_um2": [float((cells_lab == i).sum()) for i in ids],
            "nucleus_area_um2": 1.0,
            "n_transcripts": [int((tx_cell["cell_id"] == i).sum()) for i in ids],
            "n_genes": 1,
            "has_nucleus": True,
        }
    ).to_parquet(out / "cells.parquet")
    tx_cell.to_parquet(out / "transcripts.parquet")


@pytest.fixture
def constructed(tmp_path):
    ref = np.zeros((10, 10), np.uint32)
    ref[0:4, 0:4] = 1
    ref[5:9, 5:9] = 2
    pred = np.zeros_like(ref)
    pred[0:4, 0:4] = 3
    pred[5:9, 5:7] = 4
    tx = pd.DataFrame(
        {
            "x": [1.5, 2.5, 5.5, 7.5, 9.5],
            "y": [1.5, 2.5, 5.5, 7.5, 9.5],
            "gene": ["a", "b", "a", "b", "a"],
            "transcript_id": [10, 11, 12, 13, 14],
            "input_row": np.arange(5),
            "cell_id": [3, 3, 4, 0, 0],
            "in_nucleus": False,
        }
    )
    _write_out(tmp_path / "out", pred, tx)
    zarr.open_group(str(tmp_path / "ref.zarr"), mode="w").create_array(
        "cells", data=ref, chunks=(5, 5)
    )
    pd.DataFrame({"transcript_id": [14, 13, 12, 11, 10], "truth": [0, 2, 2, 1, 1]}).to_parquet(
        tmp_path / "ref.parquet"
    )
    return tmp_path


def test_evaluate_label_reference(constructed):
    m = evaluate(str(constructed / "out"), str(constructed / "ref.zarr"), block=3)
    assert m["pixel"]["precision"] == 1.0
    assert m["pixel"]["recall"] == pytest.approx(24 / 32)
    assert m["instance"]["sweep"]["0.5"]["tp"] == 2  # pred 4 has IoU 8/16 = 0.5 with ref 2
    assert m["instance"]["sweep"]["0.6"]["tp"] == 1
    assert m["baseline"]["coverage_rate"] == pytest.approx(3 / 5)
    assert "transcripts" not in m
    text = format_table(m)
    assert "pixel.recall" in text and "0.7500" in text
    json.dumps(m)


def test_evaluate_transcript_reference_joins_on_id(constructed):
    m = evaluate(str(constructed / "out"), str(constructed / "ref.parquet") + "#truth")
    t = m["transcripts"]
    # pred [3,3,4,0,0] vs ref by id [1,1,2,2,0]: sum C(nij,2)=1, rows 2, cols 2, C(5,2)=10
    # expected 0.4, max 2 -> ARI = 0.6 / 1.6
    assert t["ari"] == pytest.approx(0.375)
    assert t["fraction_correct"] == pytest.approx(3 / 4)
    assert t["purity"] == 1.0


def test_evaluate_rejects_bad_inputs(constructed, tmp_path):
    with pytest.raises(InputError, match="labels.zarr"):
        evaluate(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="no column 'nope'"):
        evaluate(str(constructed / "out"), str(constructed / "ref.parquet") + "#nope")
    with pytest.raises(InputError, match="neither"):
        evaluate(str(constructed / "out"), str(tmp_path))
    pd.DataFrame({"transcript_id": [10], "truth": [1]}).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(InputError, match="no reference ID"):
        evaluate(str(constructed / "out"), str(tmp_path / "short.parquet") + "#truth")
    pd.DataFrame({"transcript_id": [10], "truth": ["a"]}).to_parquet(tmp_path / "str.parquet")
    with pytest.raises(InputError, match="integer"):
        evaluate(str(constructed / "out"), str(tmp_path / "str.parquet") + "#truth")
    zarr.open_group(str(tmp_path / "small.zarr"), mode="w").create_array(
        "cells", data=np.zeros((3, 3), np.uint32)
    )
    with pytest.raises(InputError, match="shape"):
        evaluate(str(constructed / "out"), str(tmp_path / "small.zarr"))


def test_evaluate_generated_chip(tmp_path):
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline
    from stseg_dist.synth import synth_chip

    chip = str(tmp_path / "chip")
    synth_chip(chip, 120, 120, seed=1)
    out = str(tmp_path / "out")
    run_pipeline(
        chip,
        out,
        load_config(overrides=parse_set(["tiling.tile_size_um=64"]), use_env=False),
        local=True,
    )
    m = evaluate(out, chip)
    assert {"pixel", "instance", "transcripts", "cell_calling", "morphology", "baseline"} <= set(m)
    # the expansion method on a generated chip finds most cells
    assert m["pixel"]["f1"] > 0.5
    assert m["transcripts"]["ari_in_cells"] > 0.5
    assert 0 < m["baseline"]["coverage_rate"] <= 1


def test_expression_consistency_against_table(tmp_path):
    import shutil

    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline
    from stseg_dist.synth import synth_chip

    chip = str(tmp_path / "chip")
    synth_chip(chip, 100, 100, seed=4)
    out = str(tmp_path / "out")
    run_pipeline(
        chip,
        out,
        load_config(overrides=parse_set(["tiling.tile_size_um=64"]), use_env=False),
        local=True,
    )
    m = evaluate(out, chip)
    assert m["expression"]["mean_r"] > 0.9  # types keep their profiles through segmentation
    tx = pd.read_parquet(f"{chip}/transcripts.parquet")
    truth = pd.read_parquet(f"{chip}/truth/cells.parquet").set_index("cell_id")["cell_type"]
    tx = tx[tx.cell_true > 0]
    means = (
        tx.groupby([tx.cell_true.map(truth), "gene"], observed=True).size().unstack(fill_value=0)
    )
    means.index.name = "type"
    flipped = means.copy()
    first = str(means.index[0])
    flipped.iloc[0] = means.iloc[0].to_numpy()[::-1]  # one type's profile scrambled
    flipped.reset_index().to_csv(tmp_path / "ref.csv", index=False)
    e = evaluate(out, chip, expression_ref=str(tmp_path / "ref.csv"))["expression"]
    assert e["per_type"][first] < 0.5 < min(v for k, v in e["per_type"].items() if k != first)
    with pytest.raises(InputError, match="expression reference not found"):
        evaluate(out, chip, expression_ref=str(tmp_path / "none.csv"))
    shutil.rmtree(out)


def test_reference_free_metrics_without_a_reference(constructed, tmp_path):
    """No reference: MECR over a marker table's pairs, the assigned share and the
    nucleus-cytoplasm r.
    """
    pd.DataFrame({"cell_type": ["T", "B"], "gene": ["a", "b"]}).to_csv(
        tmp_path / "markers.csv", index=False
    )
    m = evaluate(str(constructed / "out"), markers=str(tmp_path / "markers.csv"))
    free = m["reference_free"]
    assert "instance" not in m and "transcripts" not in m
    # cell 3 holds a and b (both markers), cell 4 only a: one of two cells expressing either mixes
    assert free["gene_pairs"] == [("a", "b")] and free["mecr"] == pytest.approx(0.5)
    assert free["assigned_share"] == pytest.approx(3 / 5)
    with_ref = evaluate(
        str(constructed / "out"),
        str(constructed / "ref.parquet#truth"),
        markers=str(tmp_path / "markers.csv"),
    )
    # the reference's cells 1 (transcripts 10, 11) and 2 (12, 13) each hold a and b; 14 is outside
    assert (
        with_ref["reference_free"]["ref_mecr"] == 1.0
        and with_ref["reference_free"]["ref_assigned_share"] == 0.8
    )
    from stseg_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="--markers: file not found"):
        evaluate(str(constructed / "out"), markers=str(tmp_path / "nope.csv"))

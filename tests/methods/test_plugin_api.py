"""Plugins by import path (``cells.method=module:Class``): the lifecycle API and the former one.

A plugin written before the compute declaration (``uses_model = True`` and ``actor_resources()``,
as in tests/plugin_methods.py) still gets the actor pool it asked for, and runs.
"""

import numpy as np
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.executor import stage_resources
from stseg_dist.lifecycle import Resources
from stseg_dist.methods import get_method
from tests.conftest import make_blob_chip


def _config(*items):
    return load_config(overrides=parse_set(["runtime.progress=false", *items]), use_env=False)


def test_old_api_plugin_declares_its_actor_pool():
    method = get_method("tests.plugin_methods:GpuActorExpansion", _config())
    assert method.compute() == Resources(actors=1, num_gpus=1.0)
    res = stage_resources(_config().resources.cells, method.compute(), has_gpu=True)
    assert (res.actors, res.num_gpus) == (1, 1.0)
    assert (
        stage_resources(_config().resources.cells, method.compute(), has_gpu=False).num_gpus == 0.0
    )
    # resources.cells overrides what the plugin declared
    res = stage_resources(
        _config("resources.cells.actors=3", "resources.cells.num_gpus=0.25").resources.cells,
        method.compute(),
    )
    assert (res.actors, res.num_gpus) == (3, 0.25)


def test_model_pool_fills_the_cpus_of_a_cluster_without_gpus():
    """A model pool declared for a GPU (one actor) gets one actor per CPU slot on CPUs alone;
    a GPU cluster keeps the declared pool, and resources.cells.actors always wins.
    """
    pool = Resources(actors=1, num_gpus=0.5)
    cells = _config().resources.cells
    assert stage_resources(cells, pool, has_gpu=False, cpus=8).actors == 8
    assert (
        stage_resources(
            _config("resources.cells.num_cpus=2").resources.cells, pool, has_gpu=False, cpus=8
        ).actors
        == 4
    )
    assert stage_resources(cells, pool, has_gpu=True, cpus=8).actors == 1
    assert (
        stage_resources(
            _config("resources.cells.actors=3").resources.cells, pool, has_gpu=False, cpus=8
        ).actors
        == 3
    )
    assert (
        stage_resources(cells, Resources(), has_gpu=False, cpus=8).actors == 0
    )  # tasks stay tasks


@pytest.mark.ray
def test_pool_on_two_cpus_spreads_tiles_over_two_actors(ray_module):
    """Through Ray: two actors (two processes) share the items, and never more actors than items."""
    from stseg_dist.executor import RayExecutor

    ex = RayExecutor(progress=False)
    res = stage_resources(
        _config().resources.cells, Resources(actors=1, num_gpus=0.5), ex.has_gpu(), ex.cpu_count()
    )
    assert res.actors == 2
    pids = {o.result for o in ex.map(_pid, None, list(range(8)), factory=_no_model, resources=res)}
    assert len(pids) == 2
    assert len({o.result for o in ex.map(_pid, None, [0], factory=_no_model, resources=res)}) == 1


def _no_model(shared):
    return None


def _pid(shared, worker, item):
    import os

    return os.getpid()


def test_plain_plugin_runs_as_tasks():
    assert get_method("tests.plugin_methods:FlakyExpansion", _config()).compute() == Resources()


def test_old_api_plugin_runs_through_the_pipeline(tmp_path):
    from stseg_dist.driver import run_pipeline

    chip = make_blob_chip(tmp_path / "chip", n_transcripts=300)
    cfg = _config(
        "cells.method=tests.plugin_methods:SlowActorExpansion",
        "tiling.tile_size_um=32",
        "tiling.chunk_px=32",
    )
    ref = run_pipeline(
        chip,
        str(tmp_path / "ref"),
        _config("tiling.tile_size_um=32", "tiling.chunk_px=32"),
        local=True,
    )
    got = run_pipeline(chip, str(tmp_path / "out"), cfg, local=True)
    assert got["status"] == "complete" and got["counts"] == ref["counts"]
    import zarr

    a = zarr.open_array(str(tmp_path / "ref" / "labels.zarr" / "cells"))[:]
    b = zarr.open_array(str(tmp_path / "out" / "labels.zarr" / "cells"))[:]
    np.testing.assert_array_equal(a, b)


def test_former_plugin_returning_a_label_image_runs(tmp_path):
    """A plugin whose ``segment`` returns a bare label image (the former contract) gets the
    pixel lookup, as :meth:`TileResult.from_labels` gives.
    """
    from stseg_dist.driver import run_pipeline
    from tests.conftest import assert_same_outputs

    chip = make_blob_chip(tmp_path / "chip", n_transcripts=300)
    tiles = ["tiling.tile_size_um=32", "tiling.chunk_px=32"]
    run_pipeline(chip, str(tmp_path / "ref"), _config(*tiles), local=True)
    cfg = _config("cells.method=tests.plugin_methods:LabelsOnlyExpansion", *tiles)
    run_pipeline(chip, str(tmp_path / "out"), cfg, local=True)
    assert_same_outputs(tmp_path / "ref", tmp_path / "out")


TRANSCRIPT_LEVEL = "tests.plugin_methods:NuclearGeneExpansion"


@pytest.mark.ray
def test_transcript_level_method_plugs_in_through_the_registry(tmp_path, ray_module):
    """A method that assigns transcripts itself (``TileResult.cell_id``), loaded by import path
    alone: its assignment reaches transcripts.parquet, the cell table and the counts unchanged,
    and one in-process tile gives exactly what many Ray tiles give.
    """
    import anndata as ad
    import pandas as pd
    import zarr

    from stseg_dist.io.chip import open_chip
    from tests.conftest import assert_same_outputs, one_tile_vs_many

    chip_url = make_blob_chip(tmp_path / "chip", n_transcripts=6000)
    one, many, (cells, nuclei), _ = one_tile_vs_many(
        chip_url, tmp_path, ["runtime.progress=false", f"cells.method={TRANSCRIPT_LEVEL}"], 24
    )
    assert one["n_tiles"] == 1 and many["n_tiles"] >= 12
    assert_same_outputs(tmp_path / "one", tmp_path / "many")
    assert one["counts"] == many["counts"]

    out = tmp_path / "many"
    tx = pd.read_parquet(out / "transcripts.parquet")
    adata = ad.read_h5ad(out / "cells.h5ad")
    genes = list(adata.var_names)
    chip = open_chip(chip_url)
    h, w = chip.shape_yx
    row, col = chip.um_to_px(tx.x.to_numpy(), tx.y.to_numpy())
    row, col = np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)
    gene = tx.gene.map({g: i for i, g in enumerate(genes)}).to_numpy()
    under = cells[row, col].astype(np.int64)  # the pixel lookup's answer
    on_nucleus = nuclei[row, col] > 0
    want = np.where(on_nucleus | (gene % 2 == 1), under, 0)
    # the method's assignment, not the pixel lookup, is what transcripts.parquet holds
    np.testing.assert_array_equal(tx.cell_id.to_numpy(), want)
    np.testing.assert_array_equal(tx.in_nucleus.to_numpy(), on_nucleus)
    assert ((under > 0) & (want == 0)).sum() > 100  # many cytoplasm transcripts left out
    # ... and the cell table, the count matrix and run.json's counts follow it
    assigned = tx[tx.cell_id > 0]
    table = pd.read_parquet(out / "cells.parquet").set_index("cell_id")
    per_cell = assigned.groupby("cell_id").size().reindex(table.index, fill_value=0)
    np.testing.assert_array_equal(table.n_transcripts.to_numpy(), per_cell.to_numpy())
    matrix = pd.crosstab(assigned.cell_id, assigned.gene).reindex(
        index=table.index, columns=genes, fill_value=0
    )
    np.testing.assert_array_equal(adata.X.toarray(), matrix.to_numpy())
    assert many["counts"]["n_assigned"] == len(assigned)
    assert many["counts"]["n_transcripts"] == len(tx) == 6000
    assert zarr.open_array(str(out / "labels.zarr" / "cells"))[:].max() > 0


def test_one_resource_declaration():
    """A plugin's declaration and the run's resources.<stage> section are one type; the former
    name ``Compute`` is that type, so plugins written against it still declare the same thing.
    """
    from stseg_dist import lifecycle

    assert type(_config().resources.cells) is Resources
    assert lifecycle.Compute is Resources
    resolved = Resources(actors=1, num_gpus=0.5).resolve(
        _config("resources.cells.memory_gb=2").resources.cells, has_gpu=True
    )
    assert resolved.options() == {"num_cpus": 1.0, "num_gpus": 0.5, "memory": 2 * 2**30}


def test_boundaries_pass_is_timed_and_recorded(tmp_path):
    """The boundaries pass runs as a stage kernel: its time, placement and resumed tiles are in
    run.json like the other passes'.
    """
    import json

    from stseg_dist.driver import run_pipeline

    chip = make_blob_chip(tmp_path / "chip", n_transcripts=300)
    cfg = _config("tiling.tile_size_um=32", "tiling.chunk_px=32")
    summary = run_pipeline(chip, str(tmp_path / "out"), cfg, local=True)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["stage_seconds"]["boundaries"] > 0 and "boundaries" in summary["stage_seconds"]
    assert sum(run["placement"]["boundaries"].values()) == run["n_tiles"]
    assert run["resumed_tiles"]["boundaries"] == 0

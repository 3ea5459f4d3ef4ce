"""Plugins by import path (``cells.method=module:Class``): the lifecycle API and the former one.

A plugin written before the compute declaration (``uses_model = True`` and ``actor_resources()``,
as in tests/plugin_methods.py) still gets the actor pool it asked for, and runs.
"""

import numpy as np
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.executor import stage_resources
from stseg_dist.lifecycle import Compute
from stseg_dist.methods import get_method
from tests.conftest import make_blob_chip


def _config(*items):
    return load_config(overrides=parse_set(["runtime.progress=false", *items]), use_env=False)


def test_old_api_plugin_declares_its_actor_pool():
    method = get_method("tests.plugin_methods:GpuActorExpansion", _config())
    assert method.compute() == Compute(actors=1, num_gpus=1.0)
    res = stage_resources(_config().resources.cells, method.compute(), has_gpu=True)
    assert (res.n_actors, res.num_gpus) == (1, 1.0)
    assert (
        stage_resources(_config().resources.cells, method.compute(), has_gpu=False).num_gpus == 0.0
    )
    # resources.cells overrides what the plugin declared
    res = stage_resources(
        _config("resources.cells.actors=3", "resources.cells.num_gpus=0.25").resources.cells,
        method.compute(),
    )
    assert (res.n_actors, res.num_gpus) == (3, 0.25)


def test_model_pool_fills_the_cpus_of_a_cluster_without_gpus():
    """A model pool declared for a GPU (one actor) gets one actor per CPU slot on CPUs alone;
    a GPU cluster keeps the declared pool, and resources.cells.actors always wins."""
    pool = Compute(actors=1, num_gpus=0.5)
    cells = _config().resources.cells
    assert stage_resources(cells, pool, has_gpu=False, cpus=8).n_actors == 8
    assert (
        stage_resources(
            _config("resources.cells.num_cpus=2").resources.cells, pool, has_gpu=False, cpus=8
        ).n_actors
        == 4
    )
    assert stage_resources(cells, pool, has_gpu=True, cpus=8).n_actors == 1
    assert (
        stage_resources(
            _config("resources.cells.actors=3").resources.cells, pool, has_gpu=False, cpus=8
        ).n_actors
        == 3
    )
    assert (
        stage_resources(cells, Compute(), has_gpu=False, cpus=8).n_actors == 0
    )  # tasks stay tasks


@pytest.mark.ray
def test_pool_on_two_cpus_spreads_tiles_over_two_actors(ray_module):
    """Through Ray: two actors (two processes) share the items, and never more actors than items."""
    from stseg_dist.executor import RayExecutor

    ex = RayExecutor(progress=False)
    res = stage_resources(
        _config().resources.cells, Compute(actors=1, num_gpus=0.5), ex.has_gpu(), ex.cpu_count()
    )
    assert res.n_actors == 2
    pids = {o.result for o in ex.map(_pid, None, list(range(8)), factory=_no_model, resources=res)}
    assert len(pids) == 2
    assert len({o.result for o in ex.map(_pid, None, [0], factory=_no_model, resources=res)}) == 1


def _no_model(shared):
    return None


def _pid(shared, worker, item):
    import os

    return os.getpid()


def test_plain_plugin_runs_as_tasks():
    assert get_method("tests.plugin_methods:FlakyExpansion", _config()).compute() == Compute()


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

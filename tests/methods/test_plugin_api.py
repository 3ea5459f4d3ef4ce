"""Plugins by import path (``cells.method=module:Class``): the lifecycle API and the former one.

A plugin written before the compute declaration (``uses_model = True`` and ``actor_resources()``,
as in tests/plugin_methods.py) still gets the actor pool it asked for, and runs.
"""

import numpy as np

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
    assert stage_resources(_config().resources.cells, method.compute(), has_gpu=False).num_gpus == 0.0
    # resources.cells overrides what the plugin declared
    res = stage_resources(_config("resources.cells.actors=3", "resources.cells.num_gpus=0.25").resources.cells,
                          method.compute())
    assert (res.n_actors, res.num_gpus) == (3, 0.25)


def test_plain_plugin_runs_as_tasks():
    assert get_method("tests.plugin_methods:FlakyExpansion", _config()).compute() == Compute()


def test_old_api_plugin_runs_through_the_pipeline(tmp_path):
    from stseg_dist.driver import run_pipeline

    chip = make_blob_chip(tmp_path / "chip", n_transcripts=300)
    cfg = _config("cells.method=tests.plugin_methods:SlowActorExpansion", "tiling.tile_size_um=32",
                  "tiling.chunk_px=32")
    ref = run_pipeline(chip, str(tmp_path / "ref"), _config("tiling.tile_size_um=32", "tiling.chunk_px=32"), local=True)
    got = run_pipeline(chip, str(tmp_path / "out"), cfg, local=True)
    assert got["status"] == "complete" and got["counts"] == ref["counts"]
    import zarr

    a = zarr.open_array(str(tmp_path / "ref" / "labels.zarr" / "cells"))[:]
    b = zarr.open_array(str(tmp_path / "out" / "labels.zarr" / "cells"))[:]
    np.testing.assert_array_equal(a, b)

"""Cellpose nuclei in a Ray actor: plumbing only (random weights, never a quality check)."""

import os
import pickle

import numpy as np
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from stseg_dist.errors import ConfigError, InputError
from stseg_dist.imaging.cellpose import resolve_model_path
from tests.conftest import make_blob_chip


def write_random_cellpose_model(path) -> str:
    """A small Cellpose-4 weights file: the readout layers, random; the rest stays at random
    init.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    state = {
        "W2": torch.eye(3 * 64).reshape(192, 3, 8, 8),
        "out.weight": torch.randn(192, 256, 1, 1, generator=g) * 0.01,
        "out.bias": torch.zeros(192),
    }
    torch.save(state, path)
    return str(path)


def test_model_names_are_never_downloaded(tmp_path, monkeypatch):
    from cellpose import models

    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    with pytest.raises(ConfigError, match="never downloaded"):
        resolve_model_path("cpsam")
    with pytest.raises(ConfigError, match="neither a file, a URL"):
        resolve_model_path("no-such-model")
    (tmp_path / "cpsam").write_bytes(b"x")
    assert resolve_model_path("cpsam") == str(tmp_path / "cpsam")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/stseg-pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    """Weights are loaded with weights_only=True: a pickle that runs code is rejected unexecuted."""
    from stseg_dist.config import PipelineConfig
    from stseg_dist.nuclei.cellpose_backend import CellposeNuclei

    if os.path.exists("/tmp/stseg-pwned"):
        os.remove("/tmp/stseg-pwned")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"W2": _Evil()}))
    cfg = PipelineConfig()
    cfg.nuclei.cellpose.model = str(evil)
    backend = CellposeNuclei(cfg, chip=None)
    with pytest.raises(InputError, match="evil.pt"):
        backend.load()
    assert not os.path.exists("/tmp/stseg-pwned")


@pytest.mark.ray
@pytest.mark.slow
def test_cellpose_actor_runs_the_pipeline(tmp_path, ray_module):
    model = write_random_cellpose_model(tmp_path / "tiny_cpsam.pt")
    chip = make_blob_chip(tmp_path / "chip", shape=(64, 128), n_nuclei=6, n_transcripts=500)
    cfg = load_config(
        overrides=parse_set(
            [
                "runtime.progress=false",
                "nuclei.backend=cellpose",
                f"nuclei.cellpose.model={model}",
                "resources.nuclei.num_gpus=1",
                "tiling.tile_size_um=32",
                "tiling.chunk_px=64",
                "tiling.halo_um=6",
            ]
        ),
        use_env=False,
    )
    summary = run_pipeline(chip, str(tmp_path / "out"), cfg)
    assert summary["status"] == "complete" and summary["n_tiles"] == 2
    workers = summary["workers"]["nuclei"]
    # no GPU here: one actor per CPU (2) for the 2 tiles, each loading the model once, on the CPU
    assert len({w["pid"] for w in workers}) == 2
    assert all(w["model_loads"] == 1 for w in workers) and {w["device"] for w in workers} == {"cpu"}
    assert summary["counts"]["n_transcripts"] == 500
    import zarr

    assert zarr.open_array(str(tmp_path / "out" / "labels.zarr" / "nuclei"))[:].dtype == np.uint32

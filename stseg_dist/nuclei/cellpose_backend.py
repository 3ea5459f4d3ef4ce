"""Cellpose nuclei, run inside a Ray actor that loads the model once.

The model is a Cellpose built-in name whose weights are already cached locally (nothing is
downloaded at run time), a local path, or an fsspec URL (``s3://bucket/models/cpsam``) that is
copied once per actor into a local cache. Weights are loaded by Cellpose with
``torch.load(weights_only=True)``, so a weights file cannot execute code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..io import storage
from ..lifecycle import Compute
from .base import NucleiBackend

_MODEL_LOADS = 0  # per process: lets run.json show that each actor loaded its model once


def resolve_model_path(model: str, storage_options: dict | None = None) -> str:
    """Turn a model name, path or URL into a local file path, without any network download
    except from the user's own object store."""
    from cellpose import models as cp_models

    if storage.is_remote(model):
        cache = Path(os.environ.get("STSEG_MODEL_CACHE", tempfile.gettempdir())) / "stseg-models"
        cache.mkdir(parents=True, exist_ok=True)
        local = cache / hashlib.sha256(model.encode()).hexdigest()[:16]
        if not local.exists():
            fs, path = storage.fs_and_path(model, storage_options)
            if not fs.exists(path):
                raise InputError(f"Cellpose model not found: {model}")
            tmp = local.with_suffix(".part")
            fs.get(path, str(tmp))
            tmp.replace(local)
        return str(local)
    if os.path.exists(model):
        return model
    if model in cp_models.MODEL_NAMES:
        cached = cp_models.MODEL_DIR / model
        if cached.exists():
            return str(cached)
        raise ConfigError(
            f"Cellpose weights {model!r} are not in {cp_models.MODEL_DIR} and are never downloaded "
            "at run time; copy them there, or give nuclei.cellpose.model as a path or URL"
        )
    raise ConfigError(
        f"nuclei.cellpose.model {model!r} is neither a file, a URL, nor a Cellpose model name "
        f"({', '.join(cp_models.MODEL_NAMES)})"
    )


class CellposeNuclei(NucleiBackend):
    name = "cellpose"

    def __init__(self, config, chip):
        super().__init__(config, chip)
        self.model = None

    def context_px(self) -> int:
        return int(np.ceil(self.config.nuclei.diameter_um / self.chip.pixel_size_um))

    def compute(self) -> Compute:
        return Compute(actors=1, num_gpus=1.0)  # the model loads once per actor

    def load(self, state=None) -> None:
        import torch
        from cellpose import models as cp_models

        global _MODEL_LOADS
        cfg = self.config.nuclei.cellpose
        path = resolve_model_path(cfg.model, cfg.storage_options)
        gpu = torch.cuda.is_available()
        try:
            self.model = cp_models.CellposeModel(gpu=gpu, pretrained_model=path, use_bfloat16=gpu)
        except (ValueError, RuntimeError, OSError) as exc:
            raise InputError(f"Cellpose model {cfg.model}: cannot load: {exc}") from exc
        except Exception as exc:  # e.g. pickle.UnpicklingError from weights_only loading
            raise InputError(f"Cellpose model {cfg.model}: refused or unreadable: {exc}") from exc
        _MODEL_LOADS += 1

    def describe(self):
        return {"pid": os.getpid(), "model_loads": _MODEL_LOADS,
                "device": str(self.model.device) if self.model is not None else None}

    def segment(self, tile):
        if self.model is None:
            self.load()
        cfg = self.config.nuclei.cellpose
        rows, cols = tile.window_slices
        image = self.chip.read_image(rows, cols, self.config.nuclei.channel).astype(np.float32)
        diameter = cfg.diameter_px or self.config.nuclei.diameter_um / self.chip.pixel_size_um
        masks, _flows, _styles = self.model.eval(
            image,
            diameter=diameter,
            batch_size=cfg.batch_size,
            flow_threshold=cfg.flow_threshold,
            cellprob_threshold=cfg.cellprob_threshold,
        )
        return np.asarray(masks).astype(np.uint32)

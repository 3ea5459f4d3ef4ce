"""Cellpose models, for the Cellpose nuclei backend and the membrane method alike.

A model is a Cellpose built-in name whose weights are already cached locally (nothing is
downloaded at run time), a local path, or an fsspec URL (``s3://bucket/models/cpsam``) copied
once per process into a local cache. Cellpose reads the weights with
``torch.load(weights_only=True)``, so a weights file cannot execute code. Loads are counted per
config key and process, so run.json can show that each actor loaded its model once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, InputError
from ..settings import at_least_one, not_negative, positive_or_none, require

_LOADS: dict[str, int] = {}


@dataclass
class CellposeConfig:
    """One Cellpose section for every stage that runs it (nuclei.cellpose,
    cells.membrane.cellpose).
    """

    model: str = "cpsam"  # a built-in name, a local path, or an fsspec URL
    batch_size: int = 8
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    diameter_px: float | None = (
        None  # nuclei; the membrane method tries cells.membrane.diameters_um
    )
    storage_options: dict = field(default_factory=dict)

    def validate(self, key: str, root: object = None) -> None:
        at_least_one(self, key, "batch_size")
        not_negative(self, key, "flow_threshold")
        positive_or_none(self, key, "diameter_px")
        require(bool(self.model), f"{key}.model must name a model, a path or a URL, got ''")


def resolve_model_path(
    model: str, storage_options: dict | None = None, key: str = "nuclei.cellpose.model"
) -> str:
    """Turn a model name, path or URL into a local file path, without any network download
    except from the user's own object store. ``key`` names the setting in errors.
    """
    from cellpose import models as cp_models

    from ..io import storage

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
            f"{key}: Cellpose weights {model!r} are not in {cp_models.MODEL_DIR} and are never "
            "downloaded "
            f"at run time; copy them there, or give {key} as a path or URL"
        )
    raise ConfigError(
        f"{key} {model!r} is neither a file, a URL, nor a Cellpose model name "
        f"({', '.join(cp_models.MODEL_NAMES)})"
    )


def load_cellpose(model: str, storage_options: dict | None, key: str):
    """A ``CellposeModel`` on the GPU when torch sees one (bfloat16 there), else the CPU."""
    import torch
    from cellpose import models as cp_models

    path = resolve_model_path(model, storage_options, key)
    gpu = torch.cuda.is_available()
    try:
        loaded = cp_models.CellposeModel(gpu=gpu, pretrained_model=path, use_bfloat16=gpu)
    except (ValueError, RuntimeError, OSError) as exc:
        raise InputError(f"{key} {model}: cannot load: {exc}") from exc
    except Exception as exc:  # e.g. pickle.UnpicklingError from weights_only loading
        raise InputError(f"{key} {model}: refused or unreadable: {exc}") from exc
    _LOADS[key] = _LOADS.get(key, 0) + 1
    return loaded


def worker_facts(model, key: str) -> dict:
    """What run.json records of a worker holding a Cellpose model: its process, loads and device."""
    return {
        "pid": os.getpid(),
        "model_loads": _LOADS.get(key, 0),
        "device": str(model.device) if model is not None else None,
    }

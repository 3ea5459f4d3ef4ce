"""Per-run scratch and checkpoint layout under ``OUT/_work/<run key>/``.

Each finished tile writes its result with an atomic rename (or a single object PUT), so a file
that exists is complete: resuming a killed run only needs to list what is there. The run key
hashes the chip and the config, so a changed config never reuses stale tiles.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import constants as K
from . import statefile
from .io import storage


def run_key(chip_meta: dict, chip_url: str, n_rows: int, config: dict) -> str:
    cfg = {k: v for k, v in config.items() if k not in ("runtime", "resources")}
    blob = json.dumps(
        {"chip": chip_meta, "url": chip_url, "rows": n_rows, "config": cfg},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WorkDir:
    def __init__(self, out_url: str, key: str, storage_options: dict | None = None):
        self.out_url = out_url
        self.key = key
        self.so = dict(storage_options or {})
        self.root = storage.join(out_url, K.WORK_DIR, key)

    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def tile_url(self, stage: str, index: int, ext: str) -> str:
        return self.url(stage, f"tile-{index:06d}.{ext}")

    def save_npz(self, stage: str, index: int, arrays: dict[str, Any]) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        storage.write_bytes_atomic(self.tile_url(stage, index, "npz"), buf.getvalue(), self.so)

    def load_npz(self, stage: str, index: int) -> dict[str, np.ndarray]:
        fs, path = storage.fs_and_path(self.tile_url(stage, index, "npz"), self.so)
        with fs.open(path, "rb") as fh:
            data = fh.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save_table(self, stage: str, index: int, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        url = self.tile_url(stage, index, "parquet")
        storage.write_bytes_atomic(url, buf.getvalue(), self.so)
        return url

    def done(self, stage: str, ext: str = "npz") -> set[int]:
        fs, path = storage.fs_and_path(self.url(stage), self.so)
        if not fs.exists(path):
            return set()
        out = set()
        for p in fs.ls(path, detail=False):
            name = p.rsplit("/", 1)[-1]
            if name.startswith("tile-") and name.endswith("." + ext):
                out.add(int(name[5:11]))
        return out

    def save_json(self, name: str, obj: Any) -> None:
        storage.write_json_atomic(self.url(name), obj, self.so)

    def load_json(self, name: str) -> Any | None:
        url = self.url(name)
        if not storage.exists(url, self.so):
            return None
        return storage.read_json(url, self.so)

    def save_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.url(name), data, self.so)

    def load_bytes(self, name: str) -> bytes | None:
        fs, path = storage.fs_and_path(self.url(name), self.so)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            return fh.read()

    def save_state(self, name: str, state: Any, bind: dict[str, str]) -> None:
        """A method state as plain data (see :mod:`stseg_dist.statefile`), bound to ``bind``."""
        storage.write_bytes_atomic(self.url(name), statefile.dumps(state, bind), self.so)

    def load_state(self, name: str, bind: dict[str, str]) -> Any | None:
        """The saved state, or None if there is none; StateFileError if the file is not this
        run's.
        """
        data = self.load_bytes(name)
        if data is None:
            return None
        return statefile.loads(data, bind, where=self.url(name))

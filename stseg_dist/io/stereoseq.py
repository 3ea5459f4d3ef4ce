"""BGI Stereo-seq GEM -> canonical chip.

GEM is tab-separated with ``#`` header lines and columns geneID, x, y, MIDCount(s) in DNB units
(0.5 µm pitch). Records with a count > 1 are *expanded* into that many transcripts at the same
position, so downstream counting needs no weights. No image: a density image is rendered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import constants as K
from ..errors import InputError
from . import storage
from .generic import write_chip

PITCH_UM = 0.5


def is_gem(path: str) -> bool:
    return path.endswith((".gem", ".gem.gz"))


def is_bundle(fs, path: str) -> bool:
    return any(is_gem(p) for p in fs.ls(path, detail=False))


def convert(input_url: str, out_url: str, options: dict, overwrite: bool, so) -> dict:
    fs, path = storage.fs_and_path(input_url, so)
    if fs.isdir(path):
        gems = sorted(p for p in fs.ls(path, detail=False) if is_gem(p))
        if not gems:
            raise InputError(f"{input_url}: no *.gem or *.gem.gz file")
        path = gems[0]
    pitch = float(options.get("pixel_size_um", PITCH_UM))

    def batches():
        try:
            with fs.open(path, "rb", compression="gzip" if path.endswith(".gz") else None) as fh:
                for df in pd.read_csv(fh, sep="\t", comment="#", chunksize=1 << 20):
                    cnt = "MIDCount" if "MIDCount" in df.columns else "MIDCounts"
                    for col in ("geneID", "x", "y", cnt):
                        if col not in df.columns:
                            raise InputError(f"{path}: missing column {col!r} (expected geneID, x, y, "
                                             f"MIDCount or MIDCounts; has {list(df.columns)})")
                    rep = df[cnt].to_numpy(np.int64).clip(min=1)
                    yield pa.table({K.X: np.repeat(df["x"].to_numpy(float) * pitch, rep),
                                    K.Y: np.repeat(df["y"].to_numpy(float) * pitch, rep),
                                    K.GENE: pa.array(np.repeat(df["geneID"].astype(str).to_numpy(), rep))})
        except (EOFError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: unreadable or truncated GEM file ({e})") from e

    rep = write_chip(batches, out_url, pitch, "stereoseq", source=input_url, overwrite=overwrite,
                     storage_options=so, meta_extra={"counts": "expanded"})
    rep["dropped"] = {}
    return rep

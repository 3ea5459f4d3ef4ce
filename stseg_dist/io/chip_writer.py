"""Write a chip in the canonical layout, streaming, with ``chip.json`` written last.

``chip.json`` is the completion marker: a chip whose writer died half-way has no ``chip.json``
and is refused by :func:`stseg_dist.io.chip.open_chip`, so it never looks complete.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import constants as K
from ..errors import OutputError
from . import storage
from .chip import platform_facts


class ChipWriter:
    """Create the arrays and the transcript file of a chip, fill them piece by piece, then close.

    Usage::

        with ChipWriter(out, shape=(C, H, W), pixel_size_um=0.5, platform="synthetic") as w:
            w.write_image(np.s_[:, r0:r1, c0:c1], block)
            w.write_transcripts(table)        # any number of times; each call is >= 1 row group
        # chip.json appears only when the block exits without an error
    """

    def __init__(
        self,
        url: str,
        shape: tuple[int, ...],
        pixel_size_um: float,
        origin_um: tuple[float, float] = (0.0, 0.0),
        platform: str = "generic",
        image_dtype: str = "uint16",
        chunk_px: int = 512,
        with_nuclei: bool = False,
        extra_arrays: dict[str, str] | None = None,
        meta_extra: dict[str, Any] | None = None,
        transcript_schema: pa.Schema | None = None,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ):
        self.url = str(url).rstrip("/")
        self.so = dict(storage_options or {})
        fs, path = storage.fs_and_path(self.url, self.so)
        if fs.exists(path):
            if not fs.isdir(path):
                raise OutputError(f"{self.url}: exists and is not a folder")
            if fs.ls(path) and not overwrite:
                raise OutputError(
                    f"{self.url}: folder is not empty (pass overwrite=True to replace)"
                )
            if overwrite and fs.exists(storage.join(path, K.CHIP_JSON)):
                fs.rm(storage.join(path, K.CHIP_JSON))  # invalidate first, then rewrite
        fs.makedirs(path, exist_ok=True)
        self.meta = {
            "pixel_size_um": float(pixel_size_um),
            "origin_um": list(origin_um),
            "platform": platform,
            **platform_facts(platform),  # what methods need to know, so they never ask the platform
        }
        self.meta.update(meta_extra or {})
        yx = tuple(shape[-2:])
        chunks = tuple([1] * (len(shape) - 2)) + (min(chunk_px, yx[0]), min(chunk_px, yx[1]))
        self.image = storage.open_zarr_array(
            storage.join(self.url, K.IMAGE_ZARR),
            "w",
            self.so,
            shape=tuple(shape),
            chunks=chunks,
            dtype=image_dtype,
            fill_value=0,
        )
        self.arrays: dict[str, Any] = {}
        names = dict(extra_arrays or {})
        if with_nuclei:
            names[K.NUCLEI_ZARR] = K.LABEL_DTYPE
        for rel, dtype in names.items():
            self.arrays[rel] = storage.open_zarr_array(
                storage.join(self.url, rel),
                "w",
                self.so,
                shape=yx,
                chunks=chunks[-2:],
                dtype=dtype,
                fill_value=0,
            )
        self._tx_schema = transcript_schema
        self._tx_writer: pq.ParquetWriter | None = None
        self._tx_handle = None
        self.n_transcripts = 0

    def write_image(self, key, block: np.ndarray) -> None:
        self.image[key] = block

    def write_array(self, rel: str, key, block: np.ndarray) -> None:
        self.arrays[rel][key] = block

    def write_transcripts(self, table: pa.Table, row_group_size: int = 1 << 20) -> None:
        if table.num_rows == 0:
            return
        if self._tx_writer is None:
            schema = self._tx_schema or table.schema
            fs, path = storage.fs_and_path(storage.join(self.url, K.TRANSCRIPTS_PARQUET), self.so)
            self._tx_handle = fs.open(path, "wb")
            self._tx_writer = pq.ParquetWriter(self._tx_handle, schema, compression="zstd")
        self._tx_writer.write_table(
            table.cast(self._tx_writer.schema), row_group_size=row_group_size
        )
        self.n_transcripts += table.num_rows

    def close(self) -> None:
        if self._tx_writer is None:
            # An empty table is still a valid (empty) transcript file.
            schema = self._tx_schema or pa.schema(
                [(K.X, pa.float64()), (K.Y, pa.float64()), (K.GENE, pa.string())]
            )
            fs, path = storage.fs_and_path(storage.join(self.url, K.TRANSCRIPTS_PARQUET), self.so)
            with fs.open(path, "wb") as fh:
                pq.write_table(schema.empty_table(), fh)
        else:
            self._tx_writer.close()
            self._tx_handle.close()
        storage.write_json_atomic(storage.join(self.url, K.CHIP_JSON), self.meta, self.so)

    def __enter__(self) -> ChipWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tx_writer is not None:
            self._tx_writer.close()
            self._tx_handle.close()

"""The canonical chip: ``chip.json`` + ``image.zarr`` + ``transcripts.parquet`` (+ ``nuclei.zarr``).

A :class:`Chip` is a small picklable handle (URLs and metadata only). Ray workers receive it and
read their own windows, so the driver never holds the image or the transcript table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .. import constants as K
from ..errors import InputError
from . import storage
from .transcripts import TranscriptSource

#: The facts about a chip that cell methods may use, as chip.json records them (readers write
#: them through ChipWriter). A chip written before they were recorded gets the ones its platform
#: implies: this table is the one place outside the readers that knows platforms.
#:
#: - ``bin_um``: the bin (spot) size the learned methods default to: the platform's spot pitch
#:   where it is finer than 1 µm (CosMx, Stereo-seq DNBs: 0.5 µm), else 1 µm;
#: - ``spot_capture``: transcripts were captured on a grid of sequencing spots (Stereo-seq),
#:   not imaged in place (UCS weights the foreground class 5x there, as its paper does);
#: - ``image_source``: ``transcript_density`` when the image is a rendering of the transcripts
#:   (no stain), else ``vendor_image``.
DEFAULT_FACTS: dict[str, Any] = {
    "bin_um": 1.0,
    "spot_capture": False,
    "image_source": "vendor_image",
}
PLATFORM_FACTS: dict[str, dict[str, Any]] = {
    "cosmx": {"bin_um": 0.5},
    "stereoseq": {"bin_um": 0.5, "spot_capture": True, "image_source": "transcript_density"},
}
IMAGE_SOURCES = ("vendor_image", "transcript_density")


def platform_facts(platform: str) -> dict[str, Any]:
    """The facts a chip of ``platform`` has unless its chip.json says otherwise."""
    return {**DEFAULT_FACTS, **PLATFORM_FACTS.get(platform.lower(), {})}


@dataclass(frozen=True)
class ChipFacts:
    """What a cell method may know about the chip beyond its pixels (never its platform's name)."""

    bin_um: float = DEFAULT_FACTS["bin_um"]
    spot_capture: bool = DEFAULT_FACTS["spot_capture"]
    density_image: bool = False  # the image renders transcript density; there is no stain

    @classmethod
    def of(cls, facts: dict[str, Any]) -> ChipFacts:
        """From chip.json's keys (``bin_um``, ``spot_capture``, ``image_source``)."""
        return cls(
            float(facts["bin_um"]),
            bool(facts["spot_capture"]),
            facts["image_source"] == "transcript_density",
        )

    @classmethod
    def for_platform(cls, platform: str) -> ChipFacts:
        """What a chip of ``platform`` has when its chip.json records nothing."""
        return cls.of(platform_facts(platform))


@dataclass(frozen=True)
class ChipMeta:
    pixel_size_um: float
    origin_um: tuple[float, float]
    platform: str = "generic"
    extra: dict = field(default_factory=dict)

    @property
    def facts(self) -> ChipFacts:
        """chip.json's facts, or its platform's where it records none (an older chip)."""
        return ChipFacts.of({**platform_facts(self.platform), **self.extra})

    def to_json(self) -> dict:
        return {
            "pixel_size_um": self.pixel_size_um,
            "origin_um": list(self.origin_um),
            "platform": self.platform,
            **self.extra,
        }


def parse_chip_json(obj: Any, where: str) -> ChipMeta:
    """Validate the contents of chip.json, naming the file and key at fault."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "pixel_size_um" not in obj:
        raise InputError(f"{where}: missing required key 'pixel_size_um'")
    ps = obj["pixel_size_um"]
    if isinstance(ps, bool) or not isinstance(ps, (int, float)) or not math.isfinite(ps) or ps <= 0:
        raise InputError(f"{where}: 'pixel_size_um' must be a positive number, got {ps!r}")
    origin = obj.get("origin_um", [0.0, 0.0])
    if (
        not isinstance(origin, (list, tuple))
        or len(origin) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in origin)
        or not all(math.isfinite(v) for v in origin)
    ):
        raise InputError(
            f"{where}: 'origin_um' must be two finite numbers [x0, y0], got {origin!r}"
        )
    platform = obj.get("platform", "generic")
    if not isinstance(platform, str):
        raise InputError(f"{where}: 'platform' must be a string, got {platform!r}")
    bin_um = obj.get("bin_um", 1.0)
    if isinstance(bin_um, bool) or not isinstance(bin_um, (int, float)) or not bin_um > 0:
        raise InputError(f"{where}: 'bin_um' must be a positive number, got {bin_um!r}")
    if not isinstance(obj.get("spot_capture", False), bool):
        raise InputError(
            f"{where}: 'spot_capture' must be true or false, got {obj['spot_capture']!r}"
        )
    if obj.get("image_source", IMAGE_SOURCES[0]) not in IMAGE_SOURCES:
        raise InputError(
            f"{where}: 'image_source' must be one of {', '.join(IMAGE_SOURCES)}, "
            f"got {obj['image_source']!r}"
        )
    extra = {k: v for k, v in obj.items() if k not in ("pixel_size_um", "origin_um", "platform")}
    return ChipMeta(float(ps), (float(origin[0]), float(origin[1])), platform, extra)


@dataclass(frozen=True)
class ImageSpec:
    """Where the image lives: a zarr array (default) or a TIFF read lazily through tifffile."""

    url: str
    format: str = "zarr"  # zarr | tiff
    series: int = 0
    level: int = 0


@dataclass
class Chip:
    """Handle to a chip in the canonical layout (local path or fsspec URL)."""

    url: str
    meta: ChipMeta
    image: ImageSpec
    transcripts_url: str
    nuclei_url: str | None = None
    storage_options: dict = field(default_factory=dict)

    # -- geometry -------------------------------------------------------------------------
    @property
    def pixel_size_um(self) -> float:
        return self.meta.pixel_size_um

    @property
    def origin_um(self) -> tuple[float, float]:
        return self.meta.origin_um

    @cached_property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self._image_array().shape)

    @property
    def shape_yx(self) -> tuple[int, int]:
        s = self.image_shape
        return (int(s[-2]), int(s[-1]))

    @property
    def n_channels(self) -> int:
        return 1 if len(self.image_shape) == 2 else int(self.image_shape[0])

    def extent_um(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the image in µm."""
        h, w = self.shape_yx
        x0, y0 = self.origin_um
        ps = self.pixel_size_um
        return (x0, x0 + w * ps, y0, y0 + h * ps)

    def um_to_px(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (row, col) that covers each µm coordinate (floor), as int64."""
        ps = self.pixel_size_um
        x0, y0 = self.origin_um
        col = np.floor((np.asarray(x, dtype=np.float64) - x0) / ps).astype(np.int64)
        row = np.floor((np.asarray(y, dtype=np.float64) - y0) / ps).astype(np.int64)
        return row, col

    # -- reading ----------------------------------------------------------------------------
    def _image_array(self):
        cached = getattr(self, "_image_cache", None)
        if cached is None:
            cached = open_image(self.image, self.storage_options)
            object.__setattr__(self, "_image_cache", cached)
        return cached

    def read_image(self, rows: slice, cols: slice, channel: int = 0) -> np.ndarray:
        """One channel of a window of the image; never the whole chip."""
        arr = self._image_array()
        try:
            if arr.ndim == 2:
                if channel != 0:
                    raise InputError(
                        f"{self.image.url}: image has one channel, channel {channel} was asked for"
                    )
                return np.asarray(arr[rows, cols])
            if not 0 <= channel < arr.shape[0]:
                raise InputError(
                    f"{self.image.url}: image has {arr.shape[0]} channels, channel {channel} "
                    "was asked for"
                )
            return np.asarray(arr[channel, rows, cols])
        except InputError:
            raise
        except Exception as exc:  # corrupt or missing chunk, unreachable store
            raise InputError(
                f"{self.image.url}: cannot read window rows {rows.start}:{rows.stop}, "
                f"cols {cols.start}:{cols.stop}: {exc}"
            ) from exc

    def missing_image_chunks(self) -> tuple[int, int]:
        """(missing, total) stored chunks of a zarr image.

        Zarr reads a missing chunk as the fill value, and writers legitimately skip chunks that
        are all fill (a zero-padded mosaic), so missing chunks are reported, not refused.
        """
        arr = self._image_array()
        if self.image.format != "zarr":
            return (0, 0)
        total = int(arr.nchunks)
        return (total - int(arr.nchunks_initialized), total)

    def read_nuclei(self, rows: slice, cols: slice) -> np.ndarray:
        if self.nuclei_url is None:
            raise InputError(f"{self.url}: chip has no {K.NUCLEI_ZARR} (vendor nuclei)")
        arr = getattr(self, "_nuclei_cache", None)
        if arr is None:
            arr = storage.open_zarr_array(self.nuclei_url, "r", self.storage_options)
            if tuple(arr.shape) != self.shape_yx:
                raise InputError(
                    f"{self.nuclei_url}: shape {tuple(arr.shape)} differs from the image's "
                    f"{self.shape_yx}"
                )
            object.__setattr__(self, "_nuclei_cache", arr)
        return np.asarray(arr[rows, cols]).astype(np.uint32, copy=False)

    @cached_property
    def transcripts(self) -> TranscriptSource:
        return TranscriptSource.open(self.transcripts_url, self.storage_options)

    def __getstate__(self):
        # Ship URLs, not open stores or cached tables.
        state = dict(self.__dict__)
        for key in ("_image_cache", "_nuclei_cache", "image_shape", "transcripts"):
            state.pop(key, None)
        return state


def open_image(spec: ImageSpec, storage_options: dict | None = None):
    """Array-like (supports ``shape``, ``ndim`` and slicing) over the image, lazily."""
    if spec.format == "zarr":
        try:
            arr = storage.open_zarr_array(spec.url, "r", storage_options)
        except Exception as exc:
            raise InputError(f"{spec.url}: cannot open image zarr array: {exc}") from exc
    elif spec.format == "tiff":
        import tifffile
        import zarr

        try:
            fs, path = storage.fs_and_path(spec.url, storage_options)
            handle = fs.open(path, "rb")
            tif = tifffile.TiffFile(handle)
            store = tif.aszarr(series=spec.series, level=spec.level)
            arr = zarr.open_array(store=store, mode="r")
        except Exception as exc:
            raise InputError(f"{spec.url}: cannot open TIFF image: {exc}") from exc
    else:
        raise InputError(f"{spec.url}: unknown image format {spec.format!r} (zarr or tiff)")
    if arr.ndim not in (2, 3):
        raise InputError(f"{spec.url}: image must be (Y, X) or (C, Y, X), got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise InputError(f"{spec.url}: image is empty, shape {arr.shape}")
    return arr


def _resolve(base: str, value: Any, default: str) -> str:
    rel = default if value is None else value
    if "://" in rel or rel.startswith("/"):
        return rel
    return storage.join(base, rel)


def open_chip(url: str, storage_options: dict | None = None) -> Chip:
    """Open and validate a chip folder or prefix; errors name the file that is wrong."""
    url = str(url).rstrip("/")
    so = dict(storage_options or {})
    meta_url = storage.join(url, K.CHIP_JSON)
    if not storage.exists(url, so):
        raise InputError(f"chip not found: {url}")
    try:
        raw = storage.read_json(meta_url, so)
    except FileNotFoundError as exc:
        raise InputError(f"{meta_url}: missing; a chip needs {K.CHIP_JSON}") from exc
    except ValueError as exc:
        raise InputError(f"{meta_url}: not valid JSON: {exc}") from exc
    meta = parse_chip_json(raw, meta_url)
    img = meta.extra.get("image")
    if isinstance(img, dict):
        image = ImageSpec(
            _resolve(url, img.get("path"), K.IMAGE_ZARR),
            img.get("format", "zarr"),
            int(img.get("series", 0)),
            int(img.get("level", 0)),
        )
    else:
        image = ImageSpec(_resolve(url, img, K.IMAGE_ZARR))
    if not storage.exists(image.url, so):
        raise InputError(f"{image.url}: image missing; a chip needs {K.IMAGE_ZARR}")
    tx_url = _resolve(url, meta.extra.get("transcripts"), K.TRANSCRIPTS_PARQUET)
    if not storage.exists(tx_url, so):
        raise InputError(f"{tx_url}: transcripts missing; a chip needs {K.TRANSCRIPTS_PARQUET}")
    nuc_url = _resolve(url, meta.extra.get("nuclei"), K.NUCLEI_ZARR)
    if not storage.exists(nuc_url, so):
        nuc_url = None
    chip = Chip(url, meta, image, tx_url, nuc_url, so)
    chip.image_shape  # noqa: B018 - validates the image opens and has a sane shape
    return chip

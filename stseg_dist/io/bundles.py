"""Registry of platform readers: detect a bundle's platform and convert it to a canonical chip.

``convert_bundle`` is the single entry point used by ``stseg convert`` and ``stseg run --input``.
"""

from __future__ import annotations

from ..errors import InputError
from . import cosmx, generic, merscope, stereoseq, storage, xenium

READERS = {"xenium": xenium, "merscope": merscope, "cosmx": cosmx, "stereoseq": stereoseq}
PLATFORMS = ("xenium", "merscope", "cosmx", "stereoseq", "generic")


def detect_platform(url: str, storage_options: dict | None = None) -> str:
    """Name the platform whose files are in the folder ``url``."""
    fs, path = storage.fs_and_path(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"{url}: input does not exist")
    for name, mod in READERS.items():
        if fs.isdir(path) and mod.is_bundle(fs, path):
            return name
    if not fs.isdir(path) and stereoseq.is_gem(path):
        return "stereoseq"
    raise InputError(f"{url}: cannot detect the platform (no Xenium transcripts.*/experiment.xenium, "
                     "no MERSCOPE detected_transcripts.csv, no CosMx *_tx_file.csv, no Stereo-seq *.gem/*.gem.gz); pass --platform")


def convert_bundle(input_url: str, out_chip_url: str, platform: str = "auto", *, options: dict | None = None,
                   storage_options=None, overwrite: bool = False) -> dict:
    """Convert a vendor bundle to a canonical chip; returns a report with counts and dropped-by-reason."""
    options = dict(options or {})
    if platform == "auto":
        platform = detect_platform(input_url, storage_options)
    if platform == "generic":
        rep = generic.convert_generic(input_url, out_chip_url, options, overwrite, storage_options)
    elif platform in READERS:
        rep = READERS[platform].convert(input_url, out_chip_url, options, overwrite, storage_options)
    else:
        raise InputError(f"unknown platform {platform!r}: expected one of {PLATFORMS} or 'auto' "
                         f"(implemented: {sorted(READERS) + ['generic']})")
    rep["platform"] = platform
    rep["input"] = input_url if not storage.is_remote(input_url) else input_url.split("?")[0]
    rep["chip"] = out_chip_url
    return rep

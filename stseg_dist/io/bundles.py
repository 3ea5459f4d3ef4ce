"""Registry of platform readers: detect a bundle's platform and convert it to a canonical chip.

``convert_bundle`` is the single entry point used by ``stseg convert`` and ``stseg run --input``.
Reader options are validated against each reader's ``OPTIONS`` before any file is read.
"""

from __future__ import annotations

from ..errors import InputError
from . import cosmx, generic, merscope, stereoseq, storage, xenium
from .options import COMMON, options_doc, resolve

READERS = {"xenium": xenium, "merscope": merscope, "cosmx": cosmx, "stereoseq": stereoseq}
PLATFORMS = ("xenium", "merscope", "cosmx", "stereoseq", "generic")
REPORT_JSON = "convert_report.json"  # beside chip.json: counts, dropped-by-reason, options given


def reader_options(platform: str):
    """The options a platform's reader accepts (its own plus the common ones)."""
    mod = generic if platform == "generic" else READERS[platform]
    return tuple(mod.OPTIONS) + COMMON


def options_help() -> str:
    """Every reader's options, for ``stseg convert --help``."""
    return "\n".join(options_doc(reader_options(p), f"{p} options") for p in PLATFORMS)


def detect_platform(url: str, storage_options: dict | None = None) -> str:
    """Name the platform whose files are in the folder (or single file) ``url``."""
    fs, path = storage.fs_and_path(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"{url}: input does not exist")
    if not fs.isdir(path):
        if stereoseq.is_gem(path) or stereoseq.is_gef(path):
            return "stereoseq"
        raise InputError(
            f"{url}: a single file is read only as a Stereo-seq .gem/.gem.gz/.gef; "
            "for a plain table pass --platform generic"
        )
    for name, mod in READERS.items():
        if mod.is_bundle(fs, path):
            return name
    raise InputError(
        f"{url}: cannot detect the platform (no Xenium transcripts.*/experiment.xenium, "
        "no MERSCOPE detected_transcripts.csv, no CosMx *_tx_file.csv, "
        "no Stereo-seq *.gem/*.gem.gz/*.gef); pass --platform"
    )


def convert_bundle(
    input_url: str,
    out_chip_url: str,
    platform: str = "auto",
    *,
    options: dict | None = None,
    storage_options=None,
    overwrite: bool = False,
) -> dict:
    """Convert a vendor bundle to a canonical chip; returns a report with counts and
    dropped-by-reason.
    """
    if platform == "auto":
        platform = detect_platform(input_url, storage_options)
    if platform not in PLATFORMS:
        raise InputError(
            f"unknown platform {platform!r}: expected one of {', '.join(PLATFORMS)} or 'auto'"
        )
    opts = resolve(platform, reader_options(platform), options)
    reader = generic.convert_generic if platform == "generic" else READERS[platform].convert
    rep = reader(input_url, out_chip_url, opts, overwrite, storage_options)
    rep["platform"] = platform
    rep["input"] = input_url.split("?")[0]
    rep["chip"] = out_chip_url
    rep["options"] = {k: v for k, v in opts.items() if k in (options or {})}
    storage.write_json_atomic(storage.join(out_chip_url, REPORT_JSON), rep, storage_options)
    return rep


def pipeline_hints(report: dict) -> dict:
    """Config overrides that suit what the converted chip holds
    (applied under the user's own config).

    Vendor nuclei need no hint: ``nuclei.backend=auto`` (the default) uses them whenever the chip
    has them. A chip whose image is a transcript-density rendering and that has no vendor nuclei
    has no stain to threshold: nuclei are found as dense blobs with the density settings of the
    Stereo-seq preset (see configs/stereoseq.yaml).
    """
    if report.get("image_source") != "transcript_density" or report.get("n_vendor_nuclei"):
        return {}
    return {"nuclei": {"backend": "classical", "classical": dict(stereoseq.DENSITY_NUCLEI)}}

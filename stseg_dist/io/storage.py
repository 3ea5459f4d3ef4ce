"""fsspec helpers so every stage treats a local folder and an ``s3://`` prefix alike."""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def fs_and_path(
    url: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(str(url), **(storage_options or {}))


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def absolute(url: str) -> str:
    """A URL as it is; a local path made absolute (``file://`` dropped), so that a location
    recorded in run.json means the same from any working directory.
    """
    url = str(url)
    if is_remote(url):
        return url
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def pandas_options(url: str, storage_options: dict | None = None) -> dict | None:
    """``storage_options`` for pandas' readers: a dict for a URL (even empty), so pandas opens
    it through fsspec like every other read here (gcsfs, s3fs: their settings and emulators),
    not through pyarrow's own cloud clients; None for a local path (pandas refuses a dict).
    """
    return dict(storage_options or {}) if is_remote(url) else None


def join(base: str, *parts: str) -> str:
    base = str(base)
    if "://" in base:
        proto, rest = base.split("://", 1)
        return f"{proto}://" + posixpath.join(rest, *parts)
    return posixpath.join(base, *parts)


def url_for(base_url: str, base_path: str, path: str) -> str:
    """The URL of ``path`` (an fs-internal path under ``base_path``) as a worker can reopen it."""
    if not is_remote(base_url):
        return path
    return str(base_url).split("?")[0].rstrip("/") + path[len(base_path.rstrip("/")) :]


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = fs_and_path(url, storage_options)
    return fs.exists(path)


def read_json(url: str, storage_options: dict | None = None) -> Any:
    fs, path = fs_and_path(url, storage_options)
    with fs.open(path, "r") as fh:
        return json.load(fh)


def write_bytes_atomic(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write to a temporary sibling, then move into place, so readers never see half a file.

    On object stores a single PUT is already atomic; on local disks the rename is.
    """
    fs, path = fs_and_path(url, storage_options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_remote(url):
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


def write_json_atomic(url: str, obj: Any, storage_options: dict | None = None) -> None:
    write_bytes_atomic(url, json.dumps(obj, indent=2, default=str).encode(), storage_options)


def open_zarr_array(url: str, mode: str = "r", storage_options: dict | None = None, **kwargs):
    """Open (or with mode 'w'/'a' and shape/dtype kwargs, create) a zarr array at a URL."""
    import zarr

    if is_remote(url):
        store = zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options or {}, read_only=(mode == "r")
        )
    else:
        store = str(url).removeprefix("file://")
    if mode in ("r", "r+") or not kwargs:
        return zarr.open_array(store=store, mode=mode)
    return zarr.create_array(store=store, overwrite=(mode == "w"), **kwargs)


def open_zarr_group(url: str, mode: str = "r", storage_options: dict | None = None):
    import zarr

    if is_remote(url):
        store = zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options or {}, read_only=(mode == "r")
        )
    else:
        store = str(url).removeprefix("file://")
    return zarr.open_group(store=store, mode=mode)


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, path = fs_and_path(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move(src: str, dst: str, storage_options: dict | None = None) -> None:
    """Move a file or folder (a rename locally; copy + delete on object stores)."""
    fs, s = fs_and_path(src, storage_options)
    _, d = fs_and_path(dst, storage_options)
    if is_remote(src):
        fs.copy(s, d, recursive=True)
        fs.rm(s, recursive=True)
    else:
        fs.mv(s, d, recursive=True)

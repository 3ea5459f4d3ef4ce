"""Method state on disk without pickle: arrays in an ``.npz`` (``allow_pickle=False``), the rest
JSON.

A run that resumes reads its method state (e.g. trained weights) back from ``OUT/_work``, a folder
other people may be able to write to. Unpickling such a file would run whatever code it holds, so
the state is written as plain data only: numpy arrays and bytes as npz members, everything else as
JSON with type tags for what JSON lacks (bytes, tuples, numpy scalars, dicts with non-string keys,
non-finite floats). Loading builds only those types; nothing in the file is ever executed.

The file also records what it belongs to (``bind``: the run key, the nuclei IDs' digest, the
method) and a SHA-256 over that and the content. A file for another run, or one whose bytes were
changed, is refused with :class:`StateFileError` and the state is recomputed. The digest catches
stale, foreign and corrupted files; it is not a signature (whoever can write the output folder can
rewrite the outputs too), and the safety against code execution comes from the format itself.
Torch weights travel as bytes and methods load them with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import numpy as np

from .errors import StsegError

FORMAT = "stseg-method-state/1"
META = "__meta__"
_TAGS = ("__array__", "__bytes__", "__tuple__", "__dict__", "__float__")


class StateFileError(StsegError, ValueError):
    """A saved state cannot be written as plain data, or a file on disk is not this run's state."""


# -- encoding ------------------------------------------------------------------------------------
def _encode(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):  # first: np.float64 is also a float
        arr = np.asarray(obj)
        if arr.dtype.hasobject or arr.dtype.kind == "V":
            raise StateFileError(
                f"method state at {where}: arrays of dtype {arr.dtype} cannot be saved "
                "without pickle; use numeric, bool or fixed-width string arrays"
            )
        name = f"a{len(arrays)}"
        arrays[name] = arr
        return {"__array__": name, "scalar": isinstance(obj, np.generic)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        name = f"a{len(arrays)}"
        arrays[name] = np.frombuffer(bytes(obj), np.uint8)
        return {"__bytes__": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, arrays, f"{where}.{k}") for k, v in obj.items()}
        return {
            "__dict__": [
                [_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                for k, v in obj.items()
            ]
        }
    raise StateFileError(
        f"method state at {where}: a {type(obj).__module__}.{type(obj).__qualname__} "
        "cannot be saved without pickle; return arrays, bytes, numbers, strings, "
        "lists, tuples and dicts from prepare()"
    )


def _decode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        arr = arrays[obj["__array__"]]
        return arr[()] if obj.get("scalar") else arr
    if "__bytes__" in obj:
        return arrays[obj["__bytes__"]].tobytes()
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dict__" in obj:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__dict__"]}
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _digest(bind: dict, tree: Any, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"bind": bind, "tree": tree}, sort_keys=True).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# -- public API ----------------------------------------------------------------------------------
def dumps(state: Any, bind: dict[str, str]) -> bytes:
    """``state`` as npz bytes bound to ``bind`` (e.g. run key and method); no pickle inside."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays, "state")
    meta = {"format": FORMAT, "bind": bind, "tree": tree, "sha256": _digest(bind, tree, arrays)}
    buf = io.BytesIO()
    np.savez(
        buf, **arrays, **{META: np.frombuffer(json.dumps(meta, allow_nan=False).encode(), np.uint8)}
    )
    return buf.getvalue()


def loads(data: bytes, bind: dict[str, str], where: str = "state file") -> Any:
    """The state saved by :func:`dumps`, if ``data`` is one bound to ``bind`` and unaltered.

    Raises StateFileError naming ``where`` and the reason otherwise (not an npz, pickled content,
    another run's or method's state, content that does not match its digest).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # ValueError for pickles, BadZipFile, OSError, ...
        raise StateFileError(
            f"{where}: not a plain-data state file ({type(exc).__name__}: {exc})"
        ) from None
    raw = arrays.pop(META, None)
    if raw is None or raw.dtype != np.uint8:
        raise StateFileError(f"{where}: no {META} record; not written by stseg")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"{where}: unreadable {META} record ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateFileError(
            f"{where}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
            f"expected {FORMAT!r}"
        )
    if meta.get("bind") != bind:
        raise StateFileError(f"{where}: belongs to {meta.get('bind')}, not to this run ({bind})")
    if meta.get("sha256") != _digest(bind, meta.get("tree"), arrays):
        raise StateFileError(f"{where}: content does not match its digest (altered or corrupt)")
    try:
        return _decode(meta["tree"], arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(
            f"{where}: malformed state record ({type(exc).__name__}: {exc})"
        ) from None

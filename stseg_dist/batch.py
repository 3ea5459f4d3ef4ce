"""``stseg batch MANIFEST``: many slides on one Ray cluster, each slide independent.

Manifest (YAML mapping with a ``slides`` list, or CSV with columns
``name,input,output[,platform]``)::

    out: s3://bucket/batch-1          # where status.json and summary.csv go
    config: base.yaml                 # optional, shared base config
    max_concurrent_slides: 3          # optional
    slides:
      - name: slide-a
        input: s3://bucket/chips/a
        platform: xenium
        output: s3://bucket/out/a
        overrides: {tiling.tile_um: 400}
        # optional: what ``--reader-option`` gives ``stseg run --input``
        reader_options: {min_qv: 20}

A slide's ``input`` is a chip, or a vendor bundle that :func:`~stseg_dist.driver.run_pipeline`
converts with the slide's ``platform`` reader (into ``OUTPUT/_work/input_chip``; the reader's
hints apply when the manifest names no ``config``, under the slide's overrides, as ``stseg run
--input`` does). Slides run in threads that each call :func:`run_pipeline` on the same Ray
cluster, so they share its workers and GPU actors. A failed slide is recorded and does not stop the
others. A re-run skips slides whose ``run.json`` says complete. ``OUT/status.json`` is rewritten
atomically after every slide, and ``OUT/summary.csv`` (slide, status, cells, transcripts, wall
seconds) at the end.

Each slide's config is the manifest's ``config``, then the driver's ``STSEG_*`` environment (e.g. a
RayJob's ``runtimeEnvYAML`` ``env_vars``), then the slide's reader hints and ``overrides``. A slide
that failed because the cluster lost a node, worker, actor or object (a Ray system error, not its
data) is recorded with ``failure: cluster``: re-running on a healthy cluster can finish it, so
``stseg batch`` then exits as a crash would (see :data:`EXIT_CODES` in the CLI).
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from . import constants as K
from . import redact
from .config import ConfigError, PipelineConfig, _merge, load_config
from .io import storage
from .io.bundles import PLATFORMS

log = logging.getLogger(__name__)

SLIDE_KEYS = {"name", "input", "output", "platform", "overrides", "reader_options"}
TOP_KEYS = {"out", "config", "max_concurrent_slides", "slides"}
SUMMARY_COLUMNS = ["slide", "status", "cells", "transcripts", "wall_seconds", "error", "failure"]
# Ray errors that mean the cluster lost something the slide ran on (a node, worker, actor, object or
# the connection), not that the slide's data is bad; by class name, so that Ray is imported lazily.
CLUSTER_ERRORS = (
    "RayActorError",  # ActorDiedError, ActorUnavailableError
    "NodeDiedError",
    "LocalRayletDiedError",
    "WorkerCrashedError",
    "ObjectLostError",  # OwnerDiedError, ObjectFetchTimedOutError, ...
    "RaySystemError",
    "RpcError",
)


@dataclass
class Slide:
    name: str
    input: str
    output: str
    platform: str = "generic"
    overrides: dict = field(default_factory=dict)
    reader_options: dict = field(default_factory=dict)  # for a vendor bundle's reader


@dataclass
class Manifest:
    url: str
    out: str
    slides: list[Slide]
    config: str | None = None
    max_concurrent_slides: int | None = None


def _dirname(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def _resolve(base_dir: str, path: str) -> str:
    if "://" in path or path.startswith("/"):
        return path
    return storage.join(base_dir, path)


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        parts = str(key).split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def parse_manifest(url: str, text: str | None = None) -> Manifest:
    """Read and validate a batch manifest; every error names the file, slide and key."""
    if text is None:
        try:
            with fsspec.open(url, "r") as fh:
                text = fh.read()
        except FileNotFoundError as exc:
            raise ConfigError(f"batch manifest not found: {url}") from exc
    base = _dirname(url)
    if url.lower().endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise ConfigError(f"{url}: CSV manifest lists no slides")
        missing = {"name", "input", "output"} - set(rows[0])
        if missing:
            raise ConfigError(f"{url}: CSV manifest lacks column(s) {sorted(missing)}")
        data = {
            "out": base,
            "slides": [
                {k: v for k, v in r.items() if k in SLIDE_KEYS and v not in (None, "")}
                for r in rows
            ],
        }
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{url}: batch manifest is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{url}: batch manifest must be a mapping with a 'slides' list")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{url}: unknown manifest key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}"
        )
    slides_raw = data.get("slides")
    if not isinstance(slides_raw, list) or not slides_raw:
        raise ConfigError(f"{url}: 'slides' must be a non-empty list")
    mcs = data.get("max_concurrent_slides")
    if mcs is not None and (not isinstance(mcs, int) or isinstance(mcs, bool) or mcs < 1):
        raise ConfigError(f"{url}: max_concurrent_slides must be a positive integer, got {mcs!r}")
    cfg = data.get("config")
    if cfg is not None and not isinstance(cfg, str):
        raise ConfigError(f"{url}: 'config' must be a path, got {cfg!r}")
    out = data.get("out", base)
    if not isinstance(out, str) or not out:
        raise ConfigError(f"{url}: 'out' must be a URL, got {out!r}")
    slides, names = [], set()
    for i, s in enumerate(slides_raw):
        where = f"{url}: slides[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{where} must be a mapping, got {s!r}")
        bad = set(s) - SLIDE_KEYS
        if bad:
            raise ConfigError(
                f"{where}: unknown key(s) {sorted(bad)}; allowed: {sorted(SLIDE_KEYS)}"
            )
        for k in ("input", "output"):
            if not isinstance(s.get(k), str) or not s.get(k):
                raise ConfigError(f"{where}: '{k}' is required and must be a URL, got {s.get(k)!r}")
        name = str(s.get("name") or s["input"].rstrip("/").rsplit("/", 1)[-1])
        if name in names:
            raise ConfigError(f"{where}: duplicate slide name {name!r}")
        names.add(name)
        platform = str(s.get("platform", "generic")).lower()
        if platform not in PLATFORMS:
            raise ConfigError(
                f"{where}: platform {s.get('platform')!r} is not one of {list(PLATFORMS)}"
            )
        ov = s.get("overrides") or {}
        if not isinstance(ov, dict):
            raise ConfigError(f"{where}: 'overrides' must be a mapping, got {ov!r}")
        slides.append(
            Slide(
                name,
                _resolve(base, s["input"]),
                _resolve(base, s["output"]),
                platform,
                _nest(_flatten(ov)),
                _reader_options(where, platform, s.get("reader_options")),
            )
        )
    m = Manifest(url, _resolve(base, out), slides, _resolve(base, cfg) if cfg else None, mcs)
    # validate every slide's config now (keys, types and values), so a typo fails before any slide
    # starts
    for s in m.slides:
        try:
            load_config(m.config, s.overrides).validate()
        except ConfigError as exc:
            raise ConfigError(f"{url}: slide {s.name!r} overrides: {exc}") from exc
    return m


def _reader_options(where: str, platform: str, options: Any) -> dict:
    """A slide's reader options, checked against its platform's reader before any slide starts."""
    from .errors import InputError
    from .io.bundles import reader_options
    from .io.options import resolve

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: 'reader_options' must be a mapping, got {options!r}")
    try:
        resolve(platform, reader_options(platform), options)
    except InputError as exc:
        raise ConfigError(f"{where}: reader_options: {exc}") from exc
    return dict(options)


def _read_json(url: str) -> dict | None:
    try:
        return storage.read_json(url)
    except (FileNotFoundError, ValueError):  # json.JSONDecodeError is a ValueError
        return None


def _slide_config(m: Manifest, s: Slide):
    """The slide's config as a function of its bundle's reader hints: they apply, under the
    slide's overrides, only when the manifest names no shared config (as ``stseg run --input``).
    """

    def build(hints: dict) -> PipelineConfig:
        return load_config(m.config, s.overrides if m.config else _merge(hints, s.overrides))

    return build


def failure_kind(exc: BaseException) -> str:
    """``"cluster"`` when ``exc`` (or an exception it was raised from) is a Ray error that says the
    cluster lost a node, worker, actor, object or connection; ``"slide"`` otherwise.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {c.__name__ for c in type(exc).__mro__}
        if type(exc).__module__.startswith("ray") and names & set(CLUSTER_ERRORS):
            return "cluster"
        exc = exc.__cause__ or exc.__context__
    return "slide"


def _counts(run: dict) -> tuple[int | None, int | None]:
    c = run.get("counts") or {}
    return c.get("n_cells"), c.get("n_transcripts")


def run_batch(
    manifest_url: str,
    *,
    address: str | None = None,
    max_concurrent_slides: int | None = None,
    local: bool = False,
) -> dict[str, Any]:
    """Segment every slide in the manifest; return ``{"status", "out", "slides": [...]}``."""
    m = parse_manifest(manifest_url)
    n_par = max_concurrent_slides or m.max_concurrent_slides or min(4, len(m.slides))
    if n_par < 1:
        raise ConfigError(f"max_concurrent_slides must be positive, got {n_par}")
    started_ray = False
    if not local:
        from .executor import init_ray

        started_ray = init_ray(address)
    try:
        rows = _run_slides(m, manifest_url, n_par, local)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    storage.write_bytes_atomic(storage.join(m.out, "summary.csv"), buf.getvalue().encode())
    ok = all(r["status"] in ("complete", "skipped") for r in rows)
    return {
        "status": "complete" if ok else "incomplete",
        "cluster_failures": sum(r.get("failure") == "cluster" for r in rows),
        "out": m.out,
        "max_concurrent_slides": n_par,
        "slides": rows,
    }


def _run_slides(m: Manifest, manifest_url: str, n_par: int, local: bool) -> list[dict]:
    """Every slide, ``n_par`` at a time; ``OUT/status.json`` rewritten as each starts and ends."""
    from .driver import run_pipeline

    status_url = storage.join(m.out, "status.json")
    lock = threading.Lock()
    state: dict[str, dict] = {}

    def flush() -> None:
        with lock:
            doc = {
                "manifest": manifest_url,
                "slides": [state[s.name] for s in m.slides if s.name in state],
            }
            storage.write_json_atomic(status_url, doc)

    def one(s: Slide) -> None:
        rec = {"slide": s.name, "input": s.input, "output": s.output, "platform": s.platform}
        prev = _read_json(storage.join(s.output, K.RUN_JSON))
        if prev and prev.get("status") == "complete":
            cells, tx = _counts(prev)
            rec.update(
                status="skipped",
                cells=cells,
                transcripts=tx,
                wall_seconds=0.0,
                error=None,
                failure=None,
            )
            with lock:
                state[s.name] = rec
            flush()
            return
        with lock:
            state[s.name] = {**rec, "status": "running"}
        flush()
        t0 = time.perf_counter()
        try:
            summ = run_pipeline(
                out_url=s.output,
                config=_slide_config(m, s),
                input=s.input,
                platform=s.platform,
                reader_options=s.reader_options,
                local=local,
            )
            cells, tx = _counts(summ)
            rec.update(
                status=summ.get("status", "complete"),
                cells=cells,
                transcripts=tx,
                error=None,
                failure=None,
            )
        except Exception as exc:  # a failed slide must not stop the others
            log.exception("slide %s failed", s.name)
            rec.update(
                status="failed",
                cells=None,
                transcripts=None,
                error=redact.scrub(f"{type(exc).__name__}: {exc}"),
                failure=failure_kind(exc),
            )
        rec["wall_seconds"] = round(time.perf_counter() - t0, 3)
        with lock:
            state[s.name] = rec
        flush()

    with ThreadPoolExecutor(max_workers=n_par, thread_name_prefix="slide") as pool:
        list(pool.map(one, m.slides))
    return [state[s.name] for s in m.slides]

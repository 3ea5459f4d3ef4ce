"""Self-contained QC report (report.html) for one run: images embedded, no network needed.

Large chips stay cheap: the overview reads ``labels.zarr`` with a stride (at most
``OVERVIEW_PX`` per side), the zoomed crop reads one small window, and transcripts are sampled.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd

from . import constants as K
from .errors import InputError
from .io import storage

OVERVIEW_PX = 1200
CROP_PX = 300
MAX_POINTS = 200_000

# Set by the page itself once every image has decoded; tests read it from the dumped DOM.
_CHECK_SCRIPT = """
<script>
window.addEventListener('error', function (e) {
  document.documentElement.setAttribute('data-js-error', String(e.message || 'resource error'));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.length > 0 && imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', ok ? 'yes' : 'no');
  document.body.setAttribute('data-n-images', String(imgs.length));
});
</script>
"""


#: Above this many transcripts the report skips the reference-free metrics: they read the whole
#: transcript table, and a run's memory must follow its tiles, not its chip; ``stseg eval``
#: computes them for any run.
REFERENCE_FREE_MAX_TRANSCRIPTS = 1_000_000


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _outline(lab: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(lab, mode="inner")


def _overview(cells, stride: int, px: float) -> str:
    import matplotlib.pyplot as plt

    lab = np.asarray(cells[::stride, ::stride])
    fig, ax = plt.subplots(figsize=(7, 7 * lab.shape[0] / max(lab.shape[1], 1)))
    rgb = np.zeros(lab.shape + (3,), np.float32)
    rgb[lab > 0] = (0.25, 0.25, 0.35)
    rgb[_outline(lab)] = (1.0, 0.8, 0.1)
    ax.imshow(rgb, extent=(0, lab.shape[1] * stride * px, lab.shape[0] * stride * px, 0))
    ax.set_title(f"cells (every {stride}. pixel)")
    ax.set_xlabel("x (µm from origin)")
    ax.set_ylabel("y (µm from origin)")
    return _png(fig)


def _crop(cells, tx_url: str, px: float, origin, so) -> tuple[str, tuple[int, int]]:
    """Centre crop; only transcripts inside it are read (parquet row-group filters)."""
    import matplotlib.pyplot as plt

    h, w = cells.shape
    r0, c0 = max(h // 2 - CROP_PX // 2, 0), max(w // 2 - CROP_PX // 2, 0)
    r1, c1 = min(r0 + CROP_PX, h), min(c0 + CROP_PX, w)
    x0, y0 = origin[0] + c0 * px, origin[1] + r0 * px
    tx = pd.read_parquet(
        tx_url,
        columns=[K.X, K.Y, K.CELL_ID],
        storage_options=so or None,
        filters=[
            (K.X, ">=", x0),
            (K.X, "<", origin[0] + c1 * px),
            (K.Y, ">=", y0),
            (K.Y, "<", origin[1] + r1 * px),
        ],
    )
    if len(tx) > MAX_POINTS:
        tx = tx.sample(MAX_POINTS, random_state=0)
    lab = np.asarray(cells[r0:r1, c0:c1])
    col = (tx[K.X].to_numpy() - origin[0]) / px - c0
    row = (tx[K.Y].to_numpy() - origin[1]) / px - r0
    sel = (col >= 0) & (col < c1 - c0) & (row >= 0) & (row < r1 - r0)
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(
        np.where(_outline(lab), 1.0, np.nan), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest"
    )
    cid = tx[K.CELL_ID].to_numpy()[sel]
    un = cid == 0
    ax.scatter(col[sel][un], row[sel][un], s=2, c="0.6", label="unassigned")
    ax.scatter(
        col[sel][~un],
        row[sel][~un],
        s=2,
        c=(cid[~un] * 2654435761 % 997),
        cmap="tab20",
        label="assigned",
    )
    ax.set_xlim(0, c1 - c0)
    ax.set_ylim(r1 - r0, 0)
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(f"centre crop, rows {r0}:{r1}, cols {c0}:{c1}: transcripts coloured by cell")
    return _png(fig), (r0, c0)


def _histograms(cells: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, col, label in zip(
        axes,
        ("area_um2", "n_transcripts", "n_genes"),
        ("cell area (µm²)", "transcripts per cell", "genes per cell"),
    ):
        vals = cells[col].to_numpy(float) if col in cells and len(cells) else np.zeros(0)
        ax.hist(vals, bins=40, color="#4477aa")
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
    return _png(fig)


def _tile_heatmap(tiles: list[dict]) -> str | None:
    import matplotlib.pyplot as plt

    tiles = [t for t in tiles if t.get("core") and t.get("seconds") is not None]
    if not tiles:
        return None
    rows = sorted({t["core"][0] for t in tiles})
    cols = sorted({t["core"][2] for t in tiles})
    grid = np.full((len(rows), len(cols)), np.nan)
    for t in tiles:
        grid[rows.index(t["core"][0]), cols.index(t["core"][2])] = t["seconds"]
    fig, ax = plt.subplots(figsize=(6, 6 * len(rows) / max(len(cols), 1) + 0.5))
    im = ax.imshow(grid, cmap="viridis")
    fig.colorbar(im, ax=ax, label="seconds")
    ax.set_title("per-tile time")
    ax.set_xticks(range(len(cols)))
    ax.set_yticks(range(len(rows)))
    ax.set_xlabel("tile column")
    ax.set_ylabel("tile row")
    return _png(fig)


def _table(items) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items
    )
    return f"<table>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(
    out_url: str,
    chip: str | None = None,
    metrics: dict | None = None,
    *,
    ref: str | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write ``report.html`` into a finished run folder and return its URL.

    ``metrics``: a dict from ``evaluation.evaluate`` to show; with ``ref`` (or ``chip``, if it
    holds truth) and no ``metrics``, they are computed here. A failing metric computation is
    shown in the report instead of failing the run that just finished.
    """
    import matplotlib

    matplotlib.use("Agg")
    so = storage_options
    run_url = storage.join(out_url, K.RUN_JSON)
    if not storage.exists(run_url, so):
        raise InputError(f"no {K.RUN_JSON} in {out_url}: not a finished run")
    run = storage.read_json(run_url, so)
    import zarr

    labels_url = storage.join(out_url, K.LABELS_ZARR)
    group = zarr.open_group(labels_url, mode="r", **({"storage_options": so} if so else {}))
    cells_arr = group[K.LABELS_CELLS]
    px = float(group.attrs.get("pixel_size_um", 1.0))
    origin = tuple(group.attrs.get("origin_um", (0.0, 0.0)))
    cells = pd.read_parquet(storage.join(out_url, K.CELLS_PARQUET), storage_options=so or None)

    ref = ref or chip
    if metrics is None and ref is not None:
        try:
            from .evaluation import evaluate

            metrics = evaluate(out_url, ref, storage_options=so)
        except Exception as exc:  # the report must not fail a finished run
            metrics = {"error": f"{type(exc).__name__}: {exc}"}

    free = None
    if run.get("counts", {}).get("n_transcripts", 0) <= REFERENCE_FREE_MAX_TRANSCRIPTS:
        try:
            from .evaluation.evaluate import reference_free

            free = reference_free(out_url, storage_options=so)
        except Exception as exc:  # the report must not fail a finished run
            free = {"error": f"{type(exc).__name__}: {exc}"}

    stride = max(1, int(np.ceil(max(cells_arr.shape) / OVERVIEW_PX)))
    parts = [
        "<h2>Overview</h2>",
        f'<img alt="overview" src="{_overview(cells_arr, stride, px)}">',
        "<h2>Zoomed crop</h2>",
        f'<img alt="crop" src="{_crop(cells_arr, storage.join(out_url, K.TRANSCRIPTS_PARQUET), px, origin, so)[0]}">',
        "<h2>Per-cell distributions</h2>",
        f'<img alt="histograms" src="{_histograms(cells)}">',
    ]
    heat = _tile_heatmap(run.get("tiles", []))
    if heat:
        parts += ["<h2>Per-tile timing</h2>", f'<img alt="tile timing" src="{heat}">']
    counts = run.get("counts", {})
    dropped = counts.get("n_transcripts_input", counts.get("n_transcripts", 0)) - counts.get(
        "n_transcripts", 0
    )
    parts += [
        "<h2>Counts</h2>",
        _table(
            [
                *counts.items(),
                ("dropped transcripts", dropped),
                ("failed tiles", len(run.get("failed", []) or [])),
            ]
        ),
    ]
    parts += ["<h2>Stage seconds</h2>", _table(run.get("stage_seconds", {}).items())]
    if free:
        pairs = free.pop("gene_pairs", [])
        parts += [
            "<h2>Without a reference</h2>",
            "<p>MECR: of cells expressing either gene of a pair that marks different cell types (found "
            "exclusive in the nuclei), the share expressing both; lower means fewer cells that mix "
            "neighbours. Nucleus-cytoplasm r: median correlation of each cell's nuclear and "
            "cytoplasmic expression.</p>",
            _table([*free.items(), ("gene pairs", ", ".join(f"{a}/{b}" for a, b in pairs[:10]))]),
        ]
    if metrics and metrics.get("nuclei"):
        from .evaluation.evaluate import nucleus_section

        parts += [
            "<h2>Nuclei</h2>",
            "<p>A run nucleus matches a reference nucleus when it covers at least half of it, "
            "covers half of no other and lies at least 30% on it (containment).</p>",
            _table(nucleus_section(metrics).items()),
        ]
    if metrics:
        from .evaluation.evaluate import _flatten

        parts += [f"<h2>Metrics against {html.escape(str(ref))}</h2>", _table(_flatten(metrics))]
    title = f"stseg run report: {html.escape(str(run.get('chip', out_url)))}"
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{title}</h1><p>status: {html.escape(str(run.get('status')))}, "
        f"{run.get('n_tiles')} tiles</p>" + "".join(parts) + _CHECK_SCRIPT + "</body></html>"
    )
    url = storage.join(out_url, K.REPORT_HTML)
    storage.write_bytes_atomic(url, page.encode("utf-8"), so)
    return url

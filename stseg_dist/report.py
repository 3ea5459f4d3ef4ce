"""Self-contained QC report (report.html) for one run: images embedded, no network needed.

Large chips stay cheap: the overview reads a level of the SpatialData store's pyramid (at most
``OVERVIEW_PX`` per side) where the run wrote one, else ``labels.zarr`` with a stride; the
zoomed crop reads one small window, and transcripts are sampled.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import constants as K
from .errors import InputError
from .io import storage
from .outputs import SPATIALDATA_ZARR

OVERVIEW_PX = 1200
CROP_PX = 300
MAX_POINTS = 200_000

# Set by the page itself once every image has decoded; tests read it from the dumped DOM.
_CHECK_SCRIPT = """
<script>
window.addEventListener('error', function (e) {
  document.documentElement.setAttribute('data-js-error', String(e.message || 'resource error'));
}, true);
function overviewStats(img) {
  // The plot area fills the middle of the figure: count its grey levels (the stain) and its
  // yellow (cell) and cyan (nucleus) outline pixels.
  var c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  var g = c.getContext('2d'); g.drawImage(img, 0, 0);
  var x0 = Math.floor(c.width * 0.25), y0 = Math.floor(c.height * 0.25);
  var d = g.getImageData(x0, y0, Math.floor(c.width / 2), Math.floor(c.height / 2)).data;
  var greys = {}, cell = 0, nucleus = 0;
  for (var i = 0; i < d.length; i += 4) {
    var r = d[i], gr = d[i + 1], b = d[i + 2];
    if (Math.abs(r - gr) < 4 && Math.abs(gr - b) < 4) greys[r] = 1;
    else if (r > 200 && gr > 170 && b < 90) cell++;
    else if (r < 90 && gr > 180 && b > 200) nucleus++;
  }
  return [Object.keys(greys).length, cell, nucleus];
}
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.length > 0 && imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', ok ? 'yes' : 'no');
  document.body.setAttribute('data-n-images', String(imgs.length));
  var ov = document.querySelector('img[alt="overview"]');
  if (ov && ov.naturalWidth > 0) {
    var s = overviewStats(ov);
    document.body.setAttribute('data-overview-grey-levels', String(s[0]));
    document.body.setAttribute('data-overview-cell-outline-px', String(s[1]));
    document.body.setAttribute('data-overview-nucleus-outline-px', String(s[2]));
  }
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


def figure(fig, alt: str) -> str:
    """A matplotlib figure as a self-contained ``<img>`` (for sections, built-in or hooked)."""
    return f'<img alt="{html.escape(alt)}" src="{_png(fig)}">'


def _outline(lab: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(lab, mode="inner")


CELL_RGB = (1.0, 0.85, 0.1)  # yellow
NUCLEUS_RGB = (0.1, 0.9, 1.0)  # cyan
OUTLINE_MAX_STRIDE = 3  # coarser than this, outlines of 10 µm cells blur into noise: tint instead


def _stain_rgb(stain: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The stain as grey RGB, contrast from its 1st to 99.5th percentile; black if absent."""
    if stain is None or stain.shape != shape:
        return np.zeros(shape + (3,), np.float32)
    x = stain.astype(np.float32)
    lo, hi = np.percentile(x, (1, 99.5)) if x.size else (0.0, 1.0)
    g = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def _overlay(stain, cells: np.ndarray, nuclei: np.ndarray | None, outlines: bool) -> np.ndarray:
    rgb = _stain_rgb(stain, cells.shape)
    if outlines:
        if nuclei is not None:
            rgb[_outline(nuclei)] = NUCLEUS_RGB
        rgb[_outline(cells)] = CELL_RGB
    else:  # cells tinted yellow over the stain
        rgb[cells > 0] = 0.65 * rgb[cells > 0] + 0.35 * np.array(CELL_RGB, np.float32)
    return rgb


def _read_stain(ctx: ReportContext, rows: slice, cols: slice) -> np.ndarray | None:
    if ctx.chip is None:
        return None
    try:
        return np.asarray(ctx.chip.read_image(rows, cols, 0))
    except Exception as exc:  # noqa: BLE001 - a report without the stain beats no report
        ctx.notes.append(f"stain not shown: {type(exc).__name__}: {exc}")
        ctx.chip = None
        return None


def _store_level(ctx: ReportContext, h: int, w: int):
    """The overview's rasters from the SpatialData store's pyramid, when the run wrote one with
    a level at most ``OVERVIEW_PX`` per side: (its downsampling, cells, nuclei, stain or None);
    else None. A strided read of the full-resolution arrays decodes every chunk of them (three
    arrays of 16,000 x 16,000 px on an 8 x 8 mm chip); the store already holds them small.
    """
    import zarr

    from .export.spatialdata import CELL_LABELS, IMAGE, NUCLEUS_LABELS

    if storage.is_remote(ctx.out_url):
        return None
    store = storage.join(ctx.out_url, SPATIALDATA_ZARR)
    k = max(0, int(np.ceil(np.log2(max(h, w) / OVERVIEW_PX))))
    try:
        cells = zarr.open_array(f"{store}/labels/{CELL_LABELS}/s{k}", mode="r")
        nuclei = zarr.open_array(f"{store}/labels/{NUCLEUS_LABELS}/s{k}", mode="r")
    except Exception:  # noqa: BLE001 - no store, or no such level: read the labels
        return None
    if k == 0 or cells.shape != nuclei.shape:
        return None
    try:
        image = zarr.open_array(f"{store}/images/{IMAGE}/s{k}", mode="r")
        stain = np.asarray(image[0] if image.ndim == 3 else image)
        stain = stain if stain.shape == cells.shape else None
    except Exception:  # noqa: BLE001 - a store without the image: no stain shown
        stain = None
    return 2**k, np.asarray(cells[:]), np.asarray(nuclei[:]), stain


def _overview(ctx: ReportContext) -> str:
    import matplotlib.pyplot as plt

    cells_arr = ctx.labels[K.LABELS_CELLS]
    h, w = cells_arr.shape
    level = _store_level(ctx, h, w)
    if level is not None:  # the store's pyramid: a 2^k level, labels by nearest, stain by mean
        stride, lab, nuc, stain = level
        if stain is None:
            ctx.notes.append("stain not shown: the SpatialData store has no image at that level")
    else:
        stride = max(1, int(np.ceil(max(h, w) / OVERVIEW_PX)))
        sl = (slice(0, h, stride), slice(0, w, stride))
        lab = np.asarray(cells_arr[sl])
        nuc = np.asarray(ctx.labels[K.LABELS_NUCLEI][sl]) if K.LABELS_NUCLEI in ctx.labels else None
        stain = _read_stain(ctx, *sl)
    outlines = stride <= OUTLINE_MAX_STRIDE
    rgb = _overlay(stain, lab, nuc, outlines)
    fig, ax = plt.subplots(figsize=(7, 7 * lab.shape[0] / max(lab.shape[1], 1)))
    ax.imshow(rgb, extent=ctx.extent_um(0, h, 0, w), interpolation="nearest")
    what = "cell (yellow) and nucleus (cyan) outlines" if outlines else "cells tinted yellow"
    stain = "stain" if ctx.chip is not None else "no stain (chip not readable)"
    every = f", every {stride}th pixel" if stride > 1 else ""
    ax.set_title(f"{stain} with {what}{every}")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    return figure(fig, "overview")


def _crop(ctx: ReportContext) -> str:
    """Centre crop at full resolution; only transcripts inside it are read (row-group filters)."""
    import matplotlib.pyplot as plt

    cells = ctx.labels[K.LABELS_CELLS]
    px, origin = ctx.px, ctx.origin
    h, w = cells.shape
    r0, c0 = max(h // 2 - CROP_PX // 2, 0), max(w // 2 - CROP_PX // 2, 0)
    r1, c1 = min(r0 + CROP_PX, h), min(c0 + CROP_PX, w)
    x0, x1 = origin[0] + c0 * px, origin[0] + c1 * px
    y0, y1 = origin[1] + r0 * px, origin[1] + r1 * px
    tx_url = storage.join(ctx.out_url, K.TRANSCRIPTS_PARQUET)
    tx = pd.read_parquet(
        tx_url,
        columns=[K.X, K.Y, K.CELL_ID],
        storage_options=storage.pandas_options(tx_url, ctx.so),
        filters=[(K.X, ">=", x0), (K.X, "<", x1), (K.Y, ">=", y0), (K.Y, "<", y1)],
    )
    if len(tx) > MAX_POINTS:
        tx = tx.sample(MAX_POINTS, random_state=0)
    sl = (slice(r0, r1), slice(c0, c1))
    nuc = np.asarray(ctx.labels[K.LABELS_NUCLEI][sl]) if K.LABELS_NUCLEI in ctx.labels else None
    rgb = _overlay(_read_stain(ctx, *sl), np.asarray(cells[sl]), nuc, True)
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(rgb, extent=ctx.extent_um(r0, r1, c0, c1), interpolation="nearest")
    cid = tx[K.CELL_ID].to_numpy()
    un = cid == 0
    ax.scatter(tx[K.X][un], tx[K.Y][un], s=3, c="0.75", label="unassigned", linewidths=0)
    ax.scatter(
        tx[K.X][~un],
        tx[K.Y][~un],
        s=3,
        c=(cid[~un] * 2654435761 % 997),
        cmap="tab20",
        label="assigned",
        linewidths=0,
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title("centre crop: transcripts coloured by cell over the stain and outlines")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    return figure(fig, "crop")


def _histograms(cells: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, col, label in zip(
        axes,
        ("area_um2", "n_transcripts", "n_genes"),
        ("cell area (µm²)", "transcripts per cell", "genes per cell"),
        strict=True,
    ):
        vals = cells[col].to_numpy(float) if col in cells and len(cells) else np.zeros(0)
        ax.hist(vals, bins=40, color="#4477aa")
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
    return figure(fig, "histograms")


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
    return figure(fig, "tile timing")


def _table(items, head: tuple[str, ...] = ()) -> str:
    """Rows of (name, value[, meaning]); a third column is shown as a quieter note."""
    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + f"<th>{html.escape(str(row[0]))}</th>"
        + "".join(
            f"<td{' class=m' if i else ''}>{html.escape(_fmt(v))}</td>"
            for i, v in enumerate(row[1:])
        )
        + "</tr>"
        for row in items
    )
    return f"<table>{f'<tr>{top}</tr>' if top else ''}{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(p, (list, tuple)) for p in v):
        return ", ".join("/".join(map(str, p)) for p in v)  # gene pairs: A/B, C/D
    return str(v)


#: The short metrics table: (dotted key in the metrics, name, what it means). Rows whose key the
#: metrics lack are left out; every metric is in the fold below it.
CURATED = (
    ("baseline.n_cells", "cells", "cells found"),
    ("baseline.coverage_rate", "assigned share", "share of transcripts inside a cell"),
    ("baseline.median_area_um2", "median cell area (µm²)", "half the cells are smaller"),
    ("baseline.median_transcripts_per_cell", "median transcripts / cell", "depth per cell"),
    (
        "reference_free.mecr",
        "MECR",
        (
            "of cells expressing either gene of a pair exclusive in the chip (one ruler per chip, "
            "from its vendor nuclei or its transcripts, the same for every run), the share "
            "expressing both; lower means less mixing of neighbours (compare at equal "
            "assigned share)"
        ),
    ),
    (
        "reference_free.nucleus_cytoplasm_r",
        "nucleus-cytoplasm r",
        (
            "median correlation of a cell's nuclear and cytoplasmic expression; higher means "
            "the cytoplasm belongs to the nucleus"
        ),
    ),
    ("pixel.f1", "pixel F1", "cell foreground against the reference mask"),
    ("instance.f1", "cell F1 (IoU ≥ 0.5)", "cells matched one-to-one with reference cells"),
    ("instance.mean_matched_iou", "mean IoU of matches", "how well matched cells overlap"),
    ("instance.splits", "splits", "reference cells cut into several"),
    ("instance.merges", "merges", "predicted cells covering several reference cells"),
    (
        "transcripts.fraction_correct",
        "transcripts correct",
        "share of transcripts given the reference's cell (or none, as the reference)",
    ),
    ("transcripts.ari_in_cells", "ARI in cells", "agreement of the transcript grouping"),
    ("expression.mean_r", "expression r", "mean correlation with the reference profiles"),
)


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _metrics_section(metrics: dict, ref: str | None) -> str:
    from .evaluation.evaluate import _flatten

    rows = [
        (name, v, meaning)
        for key, name, meaning in CURATED
        if (v := _lookup(metrics, key)) is not None
    ]
    flat = _flatten(metrics)
    against = f" against {html.escape(str(ref))}" if ref else " (no reference)"
    return (
        f"<h2>Metrics{against}</h2>"
        + _table(rows, ("metric", "value", "meaning"))
        + f"<details><summary>every metric ({len(flat)})</summary>"
        + _table(flat)
        + "</details>"
    )


# -- sections other modules add -------------------------------------------------------------
@dataclass
class ReportContext:
    """What a section may draw from: the run folder, run.json, the metrics, the labels."""

    out_url: str
    run: dict
    metrics: dict
    so: dict | None
    labels: Any  # zarr group: cells, nuclei
    px: float
    origin: tuple[float, float]
    cells: pd.DataFrame
    chip: Any = None  # stseg_dist.io.chip.Chip, or None where it cannot be opened
    notes: list = field(default_factory=list)

    def extent_um(self, r0: int, r1: int, c0: int, c1: int) -> tuple[float, ...]:
        """Imshow extent (left, right, bottom, top) in µm of a pixel window."""
        x0, y0 = self.origin
        return (x0 + c0 * self.px, x0 + c1 * self.px, y0 + r1 * self.px, y0 + r0 * self.px)

    def value(self, dotted: str):
        """A metric (``evaluate``'s keys) or else a run.json value by dotted key; None if absent."""
        v = _lookup(self.metrics, dotted)
        return _lookup(self.run, dotted) if v is None else v


@dataclass(frozen=True)
class Section:
    """An optional report section: rendered where every key in ``needs`` (dotted, in the
    metrics or run.json) is present; ``order`` places it (overview 10, crop 20, nuclei 30,
    coverage-contamination 40, distributions 50, metrics 60, counts 70, timing 80).
    """

    title: str
    render: Callable[[ReportContext], str | None]  # HTML (e.g. ``figure(fig, alt)``) or None
    needs: tuple[str, ...] = ()
    order: int = 100


SECTIONS: dict[str, Section] = {}


def register_section(key: str, section: Section) -> None:
    """Add (or replace, by ``key``) a section, e.g. the nucleus metrics' figures (order 30) or
    the coverage-contamination frontier (order 40), fed by keys ``stseg eval`` writes.
    """
    SECTIONS[key] = section


def _nuclei_section(ctx: ReportContext) -> str | None:
    from .evaluation.evaluate import nucleus_section

    rows = nucleus_section(ctx.metrics or {})
    if not rows:
        return None
    return (
        "<p>A run nucleus matches a reference nucleus when it covers at least half of it, covers "
        "half of no other and lies at least 30% on it (containment; transcript hulls are smaller "
        "than stained nuclei).</p>" + _table(rows.items())
    )


register_section("nuclei", Section("Nuclei", _nuclei_section, order=30))


def _hooked(ctx: ReportContext) -> list[tuple[int, str]]:
    out = []
    for key, sec in SECTIONS.items():
        if any(ctx.value(n) is None for n in sec.needs):
            continue
        try:
            body = sec.render(ctx)
        except Exception as exc:  # noqa: BLE001 - one failing figure must not sink the report
            body = f"<p>section {html.escape(key)} failed: {html.escape(type(exc).__name__)}: "
            body += f"{html.escape(str(exc))}</p>"
        if body:
            out.append((sec.order, f"<h2>{html.escape(sec.title)}</h2>{body}"))
    return out


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
    shown in the report instead of failing the run that just finished. The stain is read from
    ``chip``, else from the chip run.json names; a report without it says so.
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
    cells_url = storage.join(out_url, K.CELLS_PARQUET)
    cells = pd.read_parquet(cells_url, storage_options=storage.pandas_options(cells_url, so))

    ref = ref or chip
    error = None
    if metrics is None and ref is not None:
        try:
            from .evaluation import evaluate

            metrics = evaluate(out_url, ref, storage_options=so)
        except Exception as exc:  # the report must not fail a finished run
            error = f"{type(exc).__name__}: {exc}"
            metrics = None
    metrics = dict(metrics or {})
    if (
        "reference_free" not in metrics
        and run.get("counts", {}).get("n_transcripts", 0) <= REFERENCE_FREE_MAX_TRANSCRIPTS
    ):
        try:
            from .evaluation.evaluate import reference_free

            metrics["reference_free"] = reference_free(out_url, storage_options=so)
        except Exception as exc:  # the report must not fail a finished run
            metrics["reference_free"] = {"error": f"{type(exc).__name__}: {exc}"}

    ctx = ReportContext(
        out_url,
        run,
        metrics,
        so,
        group,
        float(group.attrs.get("pixel_size_um", 1.0)),
        tuple(group.attrs.get("origin_um", (0.0, 0.0))),
        cells,
        _open_chip(chip or run.get("chip"), so),
    )
    if ctx.chip is None:
        ctx.notes.append(f"stain not shown: the chip ({run.get('chip')}) cannot be opened")
    parts = [
        (10, "<h2>Overview</h2>" + _overview(ctx)),
        (20, "<h2>Zoomed crop</h2>" + _crop(ctx)),
        (50, "<h2>Per-cell distributions</h2>" + _histograms(cells)),
    ]
    heat = _tile_heatmap(run.get("tiles", []))
    if heat:
        parts.append((80, "<h2>Per-tile timing</h2>" + heat))
    counts = run.get("counts", {})
    dropped = counts.get("n_transcripts_input", counts.get("n_transcripts", 0)) - counts.get(
        "n_transcripts", 0
    )
    rows = [
        *counts.items(),
        ("dropped transcripts", dropped),
        ("failed tiles", len(run.get("failed", []) or [])),
    ]
    seconds = [(k, v) for k, v in run.get("stage_seconds", {}).items()]
    parts.append((70, "<h2>Counts</h2>" + _table(rows)))
    parts.append((75, "<h2>Stage seconds</h2>" + _table(seconds)))
    if error:
        parts.append(
            (60, f"<h2>Metrics against {html.escape(str(ref))}</h2><p>{html.escape(error)}</p>")
        )
    if metrics:
        parts.append((61, _metrics_section(metrics, ref if not error else None)))
    parts += _hooked(ctx)
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in dict.fromkeys(ctx.notes))
    title = f"stseg run report: {html.escape(str(run.get('chip', out_url)))}"
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px "
        "8px;text-align:left}"
        "td.m{color:#555}img{max-width:100%}.note{color:#a33}"
        "details{margin-top:.5em}</style></head><body>"
        f"<h1>{title}</h1><p>status: {html.escape(str(run.get('status')))}, "
        f"{run.get('n_tiles')} tiles, {ctx.px:g} µm per pixel</p>"
        + notes
        + "".join(html_ for _, html_ in sorted(parts, key=lambda p: p[0]))
        + _CHECK_SCRIPT
        + "</body></html>"
    )
    url = storage.join(out_url, K.REPORT_HTML)
    storage.write_bytes_atomic(url, page.encode("utf-8"), so)
    return url


def _open_chip(url: str | None, so: dict | None):
    if not url:
        return None
    from .io.chip import open_chip

    try:
        return open_chip(url, so)
    except Exception:  # noqa: BLE001 - moved or unreadable: the report goes on without the stain
        return None

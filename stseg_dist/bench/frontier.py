"""The coverage-contamination plane: MECR against the share of transcripts assigned.

Fewer transcripts assigned nearly always mix less, so MECR is only comparable at equal coverage.
Per crop, expansion from the same nuclei at distances 1-15 µm draws the frontier (MECR against
assigned share); a method is better than expansion where it lies below that curve. Each run is
placed on the plane by its assigned share and MECR on the crop's one ruler (the chip's gene
pairs, ``evaluation.ruler``), and its signed gap is its MECR minus the frontier's, interpolated
at its assigned share (negative: below the frontier, better). A crop with ``split_x_um`` is
scored on each half as well (tune on the left, report the right).

``draw_frontier`` is what the report calls to draw the plane; ``frontier_table`` the same as text.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .. import constants as C

#: Expansion distances (µm) that draw the frontier.
FRONTIER_UM = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0)


def regions(split_x_um: float | None) -> dict:
    """Name -> x range (µm) scored: the whole crop, and its halves where it is split."""
    out = {"all": (-np.inf, np.inf)}
    if split_x_um is not None:
        out["left"] = (-np.inf, split_x_um)
        out["right"] = (split_x_um, np.inf)
    return out


def vendor_cells(chip: str, column: str) -> np.ndarray:
    """The vendor's cell per chip transcript (0 = none), as integers."""
    vendor = pd.read_parquet(f"{chip}/{C.TRANSCRIPTS_PARQUET}", columns=[column])[column]
    if pd.api.types.is_integer_dtype(vendor):
        return np.maximum(vendor.to_numpy(np.int64), 0)
    ids = vendor.astype(str)
    return np.where(ids.isin(["", "0", "-1", "UNASSIGNED"]), 0, pd.factorize(ids)[0] + 1)


def plane_points(
    chip: str, out: str, split_x_um: float | None = None, vendor_column: str | None = None
) -> dict:
    """Per region: the run's assigned share and MECR, and the vendor's where the chip has them.

    A cell cut by a region's edge counts with the transcripts it has inside the region.
    """
    from ..evaluation.metrics import mecr
    from ..evaluation.ruler import chip_gene_pairs

    tx = pd.read_parquet(
        f"{out}/{C.TRANSCRIPTS_PARQUET}", columns=[C.INPUT_ROW, C.CELL_ID, C.GENE, C.X]
    )
    genes = pd.Categorical(tx[C.GENE])
    codes = genes.codes.astype(np.int64)
    pairs = chip_gene_pairs(chip).codes(list(genes.categories))
    ours = tx[C.CELL_ID].to_numpy(np.int64)
    vendor = (
        vendor_cells(chip, vendor_column)[tx[C.INPUT_ROW].to_numpy()] if vendor_column else None
    )
    x = tx[C.X].to_numpy(float)
    res = {}
    for name, (lo, hi) in regions(split_x_um).items():
        sel = (x >= lo) & (x < hi)
        row = {
            "assigned": float((ours[sel] > 0).mean()) if sel.any() else float("nan"),
            "mecr": mecr(ours[sel], codes[sel], pairs)["mecr"],
        }
        if vendor is not None:
            row["vendor_assigned"] = float((vendor[sel] > 0).mean())
            row["vendor_mecr"] = mecr(vendor[sel], codes[sel], pairs)["mecr"]
        res[name] = row
    return res


def expansion_frontier(
    ds, workdir: str, run, overrides=(), distances=FRONTIER_UM, local: bool = True, echo=print
) -> pd.DataFrame:
    """Expansion from the dataset's nuclei at each distance: rows region, distance_um, assigned,
    mecr. ``run(ds, method, out, overrides, local)`` runs the pipeline
    (comparison.run_pipeline_only).
    """
    rows = []
    for d in distances:
        out = str(Path(workdir) / f"{ds.name}-frontier-{d:g}")
        run(ds, "expansion", out, [*overrides, f"cells.expansion.distance_um={d}"], local)
        for region, p in plane_points(ds.chip, out, ds.split_x_um, ds.vendor_column).items():
            rows.append(
                {"dataset": ds.name, "region": region, "distance_um": d, **p}
            )  # vendor columns repeat: the same at every distance
        echo(
            f"{ds.name:<22} frontier {d:>4g} µm  "
            + "  ".join(
                f"{r['region']} {r['assigned']:.3f}/{r['mecr']:.4f}"
                for r in rows
                if r["distance_um"] == d
            )
        )
    return pd.DataFrame(rows)


def frontier_mecr(frontier: pd.DataFrame, assigned: float) -> tuple[float, bool]:
    """The frontier's MECR at ``assigned`` (linear between its points; beyond its ends, the line
    through the two end points), and whether that was an extrapolation.
    """
    f = frontier.dropna(subset=["assigned", "mecr"]).sort_values("assigned")
    a, m = f.assigned.to_numpy(float), f.mecr.to_numpy(float)
    if len(a) < 2 or np.isnan(assigned):
        return float("nan"), False
    if a[0] <= assigned <= a[-1]:
        return float(np.interp(assigned, a, m)), False
    i = (0, 1) if assigned < a[0] else (-2, -1)
    slope = (m[i[1]] - m[i[0]]) / (a[i[1]] - a[i[0]]) if a[i[1]] != a[i[0]] else 0.0
    return float(m[i[0]] + slope * (assigned - a[i[0]])), True


def place(frontier: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Each point (dataset, region, label, assigned, mecr) with the frontier's MECR at its
    assigned share and its signed gap (negative: below the frontier).
    """
    out = []
    for _, p in points.iterrows():
        f = frontier[(frontier.dataset == p.dataset) & (frontier.region == p.region)]
        fm, extra = frontier_mecr(f, p.assigned)
        out.append({**p.to_dict(), "frontier_mecr": fm, "gap": p.mecr - fm, "extrapolated": extra})
    return pd.DataFrame(out)


def points_from_rows(rows: list[dict]) -> pd.DataFrame:
    """Plane points of bench rows (their ``plane`` entry) and of the vendor's cells, once per
    region.
    """
    pts, seen = [], set()
    for r in rows:
        for region, p in (r.get("plane") or {}).items():
            pts.append(
                {
                    "dataset": r["dataset"],
                    "region": region,
                    "label": r.get("label", r["method"]),
                    "assigned": p["assigned"],
                    "mecr": p["mecr"],
                }
            )
            if "vendor_mecr" in p and (r["dataset"], region) not in seen:
                seen.add((r["dataset"], region))
                pts.append(
                    {
                        "dataset": r["dataset"],
                        "region": region,
                        "label": "vendor cells",
                        "assigned": p["vendor_assigned"],
                        "mecr": p["vendor_mecr"],
                    }
                )
    return pd.DataFrame(pts)


def draw_frontier(
    frontier: pd.DataFrame, points: pd.DataFrame | None = None, title: str = "", path=None
) -> bytes:
    """PNG of one plane: the expansion frontier (labelled by distance) and the points on it.

    ``frontier``: columns assigned, mecr, distance_um; ``points``: label, assigned, mecr.
    Writes ``path`` too when given; returns the PNG bytes (for an HTML report).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = frontier.sort_values("assigned")
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.plot(f.assigned, f.mecr, "-o", color="0.45", ms=3, label="expansion frontier")
    for _, r in f.iterrows():
        ax.annotate(
            f"{r.distance_um:g}",
            (r.assigned, r.mecr),
            fontsize=7,
            color="0.35",
            xytext=(3, -9),
            textcoords="offset points",
        )
    if points is not None and len(points):
        markers = "s^vDP*XhpH<>"
        for k, (_, p) in enumerate(points.iterrows()):
            vendor = p.label == "vendor cells"
            ax.scatter(
                p.assigned,
                p.mecr,
                s=45 if vendor else 35,
                marker="x" if vendor else markers[k % 12],
                color="black" if vendor else f"C{k % 10}",
                label=p.label,
                zorder=3,
            )
    ax.set_xlabel("share of transcripts assigned to a cell")
    ax.set_ylabel("MECR (lower: less mixing)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def frontier_table(frontier: pd.DataFrame, placed: pd.DataFrame) -> str:
    """Markdown: per crop and region the frontier's points, then each point's gap."""
    blocks = []
    for (ds, region), f in frontier.groupby(["dataset", "region"], sort=False):
        f = f.sort_values("distance_um")
        head = " | ".join(f"{d:g}" for d in f.distance_um)
        vals = " | ".join(f"{a:.3f} / {m:.4f}" for a, m in zip(f.assigned, f.mecr, strict=True))
        lines = [
            f"**{ds}, {region}**: expansion frontier, assigned / MECR at distance (µm)",
            "",
            f"| distance | {head} |",
            "|---" * (len(f) + 1) + "|",
            f"| assigned / MECR | {vals} |",
            "",
        ]
        p = placed[(placed.dataset == ds) & (placed.region == region)] if len(placed) else placed
        if len(p):
            lines += [
                "| run | assigned | MECR | frontier MECR there | gap |",
                "|---|---|---|---|---|",
            ]
            for _, r in p.iterrows():
                star = "*" if r.extrapolated else ""
                lines.append(
                    f"| {r.label} | {r.assigned:.3f} | {r.mecr:.4f} | "
                    f"{r.frontier_mecr:.4f}{star} | {r.gap:+.4f} |"
                )
            lines.append("")
        blocks.append("\n".join(lines))
    note = "\n\\* beyond the frontier's last point: extrapolated along its end segment.\n"
    return "\n".join(blocks) + note


def write_planes(
    datasets,
    rows,
    workdir,
    out_dir,
    run,
    overrides=(),
    distances=FRONTIER_UM,
    local=True,
    echo=print,
) -> pd.DataFrame:
    """Draw every dataset's plane into ``out_dir`` (a PNG per crop and region, frontier.md,
    frontier.json) and return the placed points (each run's gap to the frontier).
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frontier = pd.concat(
        [
            expansion_frontier(ds, workdir, run, overrides, distances, local, echo)
            for ds in datasets
        ],
        ignore_index=True,
    )
    placed = place(frontier, points_from_rows(rows))
    for (name, region), f in frontier.groupby(["dataset", "region"], sort=False):
        p = placed[(placed.dataset == name) & (placed.region == region)] if len(placed) else None
        draw_frontier(f, p, f"{name}, {region}", out / f"frontier_{name}_{region}.png")
    (out / "frontier.md").write_text(frontier_table(frontier, placed))
    (out / "frontier.json").write_text(
        json.dumps(
            {"frontier": frontier.to_dict("records"), "points": placed.to_dict("records")},
            indent=2,
            default=float,
        )
    )
    echo(frontier_table(frontier, placed))
    return placed

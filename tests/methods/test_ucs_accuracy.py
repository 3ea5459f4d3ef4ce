"""UCS against nucleus expansion (the preset's distance) on real crops whose reference is
independent of nucleus shape: at least as good on cell F1 and on transcript ARI, and, where the
panel has marker genes of several types (CosMx), mixing cell types no more than the expansion
frontier at UCS's own assigned share (issue #25: compare at equal coverage, never at each method's
own). MERFISH U2-OS is one cell type, so only F1 and ARI judge it. The paper variants of GeneSegNet
and SSL-CST keep stated floors on the real crop that suits each.
"""

import numpy as np
import pandas as pd
import pytest

from stseg_dist.bench.comparison import real_datasets, run_method
from stseg_dist.config import PipelineConfig, load_config
from tests.conftest import shared_data

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = shared_data()
    work = tmp_path_factory.mktemp("crops")
    return {
        d.name: d
        for d in real_datasets(str(work), str(root), ["cosmx_lung12_fov2", "merfish_u2os"])
    }


#: crops judged on the coverage-contamination plane too (marker genes of several cell types)
JUDGED_BY_MECR = {"cosmx_lung12_fov2"}


@pytest.mark.parametrize("crop", ["cosmx_lung12_fov2", "merfish_u2os"])
def test_ucs_at_least_expansion_on_real_crops(crops, crop, tmp_path):
    ds = crops[crop]

    def run(spec: str, *sets: str) -> dict:
        out = str(tmp_path / f"{spec}{len(sets)}-{'-'.join(sets)}".replace("=", "_"))
        return run_method(ds, spec, out, ["runtime.progress=false", *sets], local=True)

    exp, ucs = run("expansion"), run("ucs")
    keys = ("cell_f1_iou50", "vendor_ari", "mecr", "assigned_share")
    print({m: {k: round(r[k], 3) for k in keys} for m, r in (("expansion", exp), ("ucs", ucs))})
    assert ucs["cell_f1_iou50"] >= exp["cell_f1_iou50"]
    assert ucs["vendor_ari"] >= exp["vendor_ari"]
    if crop not in JUDGED_BY_MECR:
        return
    # the expansion frontier (same nuclei) bracketing UCS's assigned share, read off linearly
    points = [exp]
    config = load_config(ds.config) if ds.config else PipelineConfig()
    distance = config.cells.expansion.distance_um
    while points[-1]["assigned_share"] > ucs["assigned_share"] and distance > 1.0:
        distance -= 0.5
        points.append(run("expansion", f"cells.expansion.distance_um={distance}"))
    shares = [p["assigned_share"] for p in points[::-1]]
    mecrs = [p["mecr"] for p in points[::-1]]
    frontier = float(np.interp(ucs["assigned_share"], shares, mecrs))
    print(
        {
            "frontier_at_ucs_share": round(frontier, 4),
            "points": list(zip(shares, mecrs, strict=True)),
        }
    )
    assert ucs["mecr"] <= frontier


# The paper variants of the other transcript methods (issue #18), each on the real crop where its
# paper's assumptions hold, against a floor a little under what it measured (CosMx expansion:
# F1 0.605, ARI 0.469; MERFISH expansion: F1 0.571, ARI 0.193). Not asserted, measured: SSL-CST
# paper on CosMx F1 0.622, ARI 0.345 (75 s); GeneSegNet paper on MERFISH F1 0.071 (its cells are
# 3-5x their nucleus, beyond its reach: docs/accuracy.md).
@pytest.mark.parametrize(
    "crop, method, floor",
    [
        # measured F1 0.639, ARI 0.502: above expansion on both
        ("cosmx_lung12_fov2", "genesegnet", {"cell_f1_iou50": 0.60, "vendor_ari": 0.47}),
        # measured F1 0.929, ARI 0.570, assigned 0.800
        ("merfish_u2os", "sslcst", {"cell_f1_iou50": 0.85, "vendor_ari": 0.50}),
    ],
)
def test_paper_variants_keep_their_floor_on_real_crops(crops, crop, method, floor, tmp_path):
    row = run_method(
        crops[crop],
        method,
        str(tmp_path / method),
        ["runtime.progress=false", f"cells.{method}.variant=paper"],
        local=True,
    )
    print({k: round(row[k], 3) for k in ("cell_f1_iou50", "vendor_ari", "mecr", "assigned_share")})
    for key, value in floor.items():
        assert row[key] >= value, (key, row[key])


# Issue #25's Done-when on xenium_breast_top (vendor nuclei; settings chosen on the left half,
# x < 255 µm, scored on the right): UCS at the vendor's coverage (at least its share - 0.01), at
# an MECR at least 0.01 below the vendor's cells', and below the expansion frontier there.
# cells.ucs.coverage=1.0 runs the spillover pass with it (cells.spillover.enabled: null).
# Measured on the right half (docs/accuracy_frontier.md): assigned 0.981, MECR 0.0275; vendor's
# cells 0.988 / 0.0390; expansion frontier at 0.981: 0.0407.
VENDOR_MECR_MARGIN = 0.01
AT_VENDOR_COVERAGE = "ucs:cells.ucs.coverage=1.0"


def test_ucs_at_the_vendors_coverage_mixes_less_on_xenium_breast_right_half(tmp_path):
    from stseg_dist.bench.frontier import frontier_mecr

    root = shared_data("xenium_breast_top").parent
    (ds,) = real_datasets(str(tmp_path / "chips"), str(root), ["xenium_breast_top"])
    ucs = run_method(
        ds, AT_VENDOR_COVERAGE, str(tmp_path / "ucs"), ["runtime.progress=false"], True
    )["plane"]["right"]
    frontier = pd.DataFrame(
        [
            {
                "distance_um": d,
                **run_method(
                    ds,
                    f"expansion:cells.expansion.distance_um={d}",
                    str(tmp_path / f"exp{d}"),
                    ["runtime.progress=false"],
                    True,
                )["plane"]["right"],
            }
            for d in (10, 12, 15)
        ]
    )
    at, _ = frontier_mecr(frontier, ucs["assigned"])
    print(ucs, frontier.to_dict("records"), at)
    assert ucs["assigned"] >= ucs["vendor_assigned"] - 0.01
    assert ucs["mecr"] <= ucs["vendor_mecr"] - VENDOR_MECR_MARGIN
    assert ucs["mecr"] < at


# Issue #25: the coverage knob on or below the expansion frontier. On xenium_lung_preview the knob
# alone lay above it past ~0.87 assigned (coverage 1.0: 0.958 / 0.1949, frontier +0.0078); with
# the spillover pass it brings (docs/accuracy_frontier.md): 0.958 / 0.1327, frontier there ~0.187.
def test_ucs_coverage_knob_is_below_the_frontier_on_xenium_lung_preview(tmp_path):
    from stseg_dist.bench.frontier import frontier_mecr

    root = shared_data("xenium_lung_preview").parent
    (ds,) = real_datasets(str(tmp_path / "chips"), str(root), ["xenium_lung_preview"])

    def plane(spec: str) -> dict:
        out = str(tmp_path / spec.replace(":", "_").replace("=", "_"))
        return run_method(ds, spec, out, ["runtime.progress=false"], True)["plane"]["all"]

    ucs = plane("ucs:cells.ucs.coverage=1.0")
    frontier = pd.DataFrame(
        [
            {"distance_um": d, **plane(f"expansion:cells.expansion.distance_um={d}")}
            for d in (12, 15)
        ]
    )
    at, _ = frontier_mecr(frontier, ucs["assigned"])
    print(ucs, frontier.to_dict("records"), at)
    assert ucs["assigned"] >= 0.9
    assert ucs["mecr"] <= at


# cells.spillover.rule=diffusion (issue 25: a pass that lowers MECR must not lower ARI where the
# reference does not come from marker genes). Measured (docs/accuracy_frontier.md): on CosMx fov2
# the chip's nuclei support one cell type, and on MERFISH U2-OS the decay is not significant
# (LRT 1.1), so nothing moves and F1/ARI are unchanged (the ratio rule lowers ARI on all four:
# 0.5049 -> 0.4839, 0.5450 -> 0.5235, 0.1930 -> 0.1926, 0.7324 -> 0.7233). The pass moves
# transcripts, never labels, so the F1 assert guards that; the ARI assert is the one at stake.
DIFFUSION = ("cells.spillover.enabled=true", "cells.spillover.rule=diffusion")


@pytest.mark.parametrize(
    "crop, method",
    [
        ("cosmx_lung12_fov2", "expansion"),
        ("cosmx_lung12_fov2", "ucs"),
        ("merfish_u2os", "expansion"),
        ("merfish_u2os", "ucs"),
    ],
)
def test_the_diffusion_rule_keeps_f1_and_ari(crops, crop, method, tmp_path):
    ds = crops[crop]
    base = run_method(ds, method, str(tmp_path / "off"), ["runtime.progress=false"], True)
    spill = run_method(
        ds, method, str(tmp_path / "on"), ["runtime.progress=false", *DIFFUSION], True
    )
    print({k: (round(base[k], 4), round(spill[k], 4)) for k in ("cell_f1_iou50", "vendor_ari")})
    assert spill["cell_f1_iou50"] >= base["cell_f1_iou50"]
    assert spill["vendor_ari"] >= base["vendor_ari"]


# And on xenium_breast_top's right half at the vendor's coverage it beats the vendor's cells by
# the margin on the vendor-nuclei ruler: measured 0.981 / 0.0257 against the vendor's 0.988 /
# 0.0390 (the ratio rule: 0.0275). On the chip-bin ruler it is 0.0050 below the vendor (0.0308 vs
# 0.0358), not 0.01: not asserted.
def test_the_diffusion_rule_at_the_vendors_coverage_on_xenium_breast_right_half(tmp_path):
    root = shared_data("xenium_breast_top").parent
    (ds,) = real_datasets(str(tmp_path / "chips"), str(root), ["xenium_breast_top"])
    ucs = run_method(
        ds,
        AT_VENDOR_COVERAGE + ":cells.spillover.rule=diffusion",
        str(tmp_path / "ucs"),
        ["runtime.progress=false"],
        True,
    )["plane"]["right"]
    print(ucs)
    assert ucs["assigned"] >= ucs["vendor_assigned"] - 0.01
    assert ucs["mecr"] <= ucs["vendor_mecr"] - VENDOR_MECR_MARGIN

"""SSL-CST's accuracy on a generated chip made for it, scored by ``stseg bench --methods``'s scorer:
large cells (1,000 per mm², ~40 µm across, nuclei about half that) packed edge to edge with little
free RNA, where a 5 µm nucleus expansion cannot reach the cell borders and transcripts must decide.

Measured (200 µm chip, seed 1, ``cells.cell_diameter_um`` 40): cell F1 expansion 0.585, ``stseg``
(fill_um 4) 0.707, ``paper`` with ``fill_um: 4`` 0.634; transcripts in the right cell 0.474 / 0.689
/ 0.694 (250 µm chip in docs/accuracy.md: F1 0.550 / 0.595 / 0.565, and 0.000 for ``paper`` as
published: its masks are porous). On the default 150 µm chip (small cells) neither variant
matches expansion (0.922 vs 0.814 / 0.802 with fill): docs/methods.md, sslcst.
"""

import pytest

from stseg_dist.bench.comparison import Dataset, run_method
from stseg_dist.synth import synth_chip

pytestmark = pytest.mark.slow

QUIET = ["runtime.progress=false", "cells.cell_diameter_um=40"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("sslcst_acc")
    chip = str(work / "chip")
    synth_chip(
        chip, 200, 200, 1, cell_density_per_mm2=1000.0, occupancy=1.0, background_fraction=0.02
    )
    ds = Dataset("large_cells", chip)
    runs = {
        "expansion": ("expansion", []),
        "stseg": ("sslcst", []),
        "paper": ("sslcst", ["cells.sslcst.variant=paper", "cells.sslcst.fill_um=4"]),
    }
    out = {
        name: run_method(ds, method, str(work / name), QUIET + items, local=True)
        for name, (method, items) in runs.items()
    }
    print(
        {
            m: {
                k: round(r[k], 3)
                for k in ("cell_f1_iou50", "right_cell_fraction", "mecr", "assigned_share")
            }
            for m, r in out.items()
        }
    )
    return out


def test_sslcst_variants_match_expansion_where_cells_outgrow_it(rows):
    f1 = {m: rows[m]["cell_f1_iou50"] for m in rows}
    right = {m: rows[m]["right_cell_fraction"] for m in rows}
    assert f1["stseg"] >= f1["expansion"] and f1["paper"] >= f1["expansion"]
    assert min(right["stseg"], right["paper"]) >= right["expansion"] + 0.15

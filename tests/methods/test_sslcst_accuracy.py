"""SSL-CST's accuracy on a generated chip with truth, scored by ``stseg bench --methods``'s scorer.

Measured (150 µm chip, seed 1): cell F1 expansion 0.922, ``stseg`` 0.814, ``paper`` 0.659;
transcripts in the right cell 0.756 / 0.702 / 0.709. Neither variant matches expansion on cell
F1 there (the paper variant's cells spill past their neighbours' borders: assigned 0.922 vs
0.885), so the test asserts the measured truth, not that claim: each variant keeps a floor a
little under its measurement, and ``paper`` trails expansion by no more than a little over the
measured gap (0.263).
"""

import pytest

from stseg_dist.bench.comparison import run_method, synthetic_datasets

pytestmark = pytest.mark.slow

QUIET = ["runtime.progress=false"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("sslcst_acc")
    (ds,) = synthetic_datasets(str(work), 150, [1])
    runs = {"expansion": ("expansion", []), "stseg": ("sslcst", []),
            "paper": ("sslcst", ["cells.sslcst.variant=paper"])}
    out = {name: run_method(ds, method, str(work / name), QUIET + items, local=True)
           for name, (method, items) in runs.items()}
    print({m: {k: round(r[k], 3) for k in ("cell_f1_iou50", "right_cell_fraction", "mecr", "assigned_share")}
           for m, r in out.items()})
    return out


def test_sslcst_variants_on_a_generated_chip(rows):
    exp, ours, paper = (rows[m]["cell_f1_iou50"] for m in ("expansion", "stseg", "paper"))
    assert ours >= FLOOR["stseg"] and paper >= FLOOR["paper"]
    assert paper >= exp - GAP
    assert rows["paper"]["right_cell_fraction"] >= FLOOR["paper_right_cell"]


FLOOR = {"stseg": 0.75, "paper": 0.6, "paper_right_cell": 0.65}
GAP = 0.3

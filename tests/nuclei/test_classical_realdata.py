"""Classical nuclei with the Xenium and CosMx presets' dense-tissue settings against the
vendors' nuclei on real crops, with floors a little below the figures measured in
docs/nuclei_classical.md (containment F1: a prediction matches a reference nucleus when it covers
at least half of it, half of no other, and lies at least 30% on it; the references are transcript
hulls, smaller than stained nuclei).
"""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from stseg_dist.config import load_config, parse_set
from stseg_dist.nuclei.classical import ClassicalNuclei
from tests.conftest import REPO, shared_data

pytestmark = pytest.mark.realdata


def containment_f1(pred, ref, ref_ids, pred_ids) -> float:
    """Containment F1 over the reference and predicted nuclei listed (one-to-one matches)."""
    pred, ref = pred.astype(np.int64), ref.astype(np.int64)
    both = (pred > 0) & (ref > 0)
    pairs, inter = np.unique(np.stack([pred[both], ref[both]]), axis=1, return_counts=True)
    p, r = pairs
    ap, ar = np.bincount(pred.ravel()), np.bincount(ref.ravel())
    covers = inter / ar[r] >= 0.5
    n_covered = np.bincount(p[covers], minlength=len(ap))
    ok = covers & (n_covered[p] == 1) & (inter / ap[p] >= 0.3)
    matched = set(zip(p[ok].tolist(), r[ok].tolist(), strict=True))
    tp_ref = len({b for _, b in matched} & set(ref_ids))
    tp_pred = len({a for a, _ in matched} & set(pred_ids))
    return (tp_ref + tp_pred) / (len(ref_ids) + len(pred_ids))


def _labels_by_centroid(labels, keep):
    ids = np.unique(labels[labels > 0])
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
    return ids[keep(centres)].tolist()


def _segment(chip_path, preset):
    from stseg_dist.io.chip import open_chip
    from stseg_dist.lifecycle import PrepareContext
    from stseg_dist.tiling import make_grid

    chip = open_chip(chip_path)
    cfg = load_config(
        str(REPO / "configs" / preset), overrides=parse_set(["nuclei.backend=classical"])
    )
    backend = ClassicalNuclei(cfg, chip)
    grid = make_grid(chip.shape_yx, chip.pixel_size_um, 1e6, 0.0, 256)
    ctx = PrepareContext(chip, cfg, grid, [], lambda fn, idx, desc="": [fn(grid[i]) for i in idx])
    backend.load(backend.prepare(ctx))
    return chip, backend.segment(grid[0]).astype(np.int64)


def test_xenium_breast_right_half(tmp_path):
    """Tuned on the left half (x < 255 µm); the right half is held out (measured 0.734)."""
    from stseg_dist.io.bundles import convert_bundle

    convert_bundle(str(shared_data("xenium_breast_top")), str(tmp_path / "chip"), "xenium")
    chip, pred = _segment(str(tmp_path / "chip"), "xenium.yaml")
    h, w = chip.shape_yx
    ref = chip.read_nuclei(slice(0, h), slice(0, w)).astype(np.int64)
    col = 255.0 / chip.pixel_size_um

    def right(c):
        return c[:, 1] >= col

    f1 = containment_f1(
        pred, ref, _labels_by_centroid(ref, right), _labels_by_centroid(pred, right)
    )
    print(f"xenium_breast_top right half: containment F1 {f1:.3f}")
    assert f1 >= 0.68


def test_cosmx_fov2(tmp_path):
    """Against the hull of each vendor cell's Nuclear transcripts (>= 5; measured 0.833 with
    this hull, 0.818 against the reader's rebuilt nuclei in stseg eval).
    """
    from scipy.spatial import ConvexHull, QhullError
    from skimage.draw import polygon

    from stseg_dist.io.bundles import convert_bundle

    convert_bundle(
        str(shared_data("cosmx_lung12_fov2")),
        str(tmp_path / "chip"),
        "cosmx",
        options={"pixel_size_um": 0.18, "image_offset_px": {"x": 4800, "y_top": 3648}},
    )
    chip, pred = _segment(str(tmp_path / "chip"), "cosmx.yaml")
    t = pd.read_parquet(f"{tmp_path}/chip/transcripts.parquet")
    t = t[(t.CellComp == "Nuclear") & (t.vendor_cell_id > 0)]
    rows, cols = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    ref = np.zeros(chip.shape_yx, np.int64)
    for k, idx in enumerate(t.groupby("vendor_cell_id").indices.values(), start=1):
        if len(idx) < 5:
            continue
        pts = np.stack([rows[idx] + 0.5, cols[idx] + 0.5], 1)
        try:
            hull = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear transcripts: no area
            continue
        m = np.zeros(chip.shape_yx, bool)
        m[polygon(hull[:, 0], hull[:, 1], chip.shape_yx)] = True
        ref[ndi.binary_dilation(m) & (ref == 0)] = k

    def every(c):
        return np.ones(len(c), bool)

    f1 = containment_f1(
        pred, ref, _labels_by_centroid(ref, every), _labels_by_centroid(pred, every)
    )
    print(f"cosmx_lung12_fov2: containment F1 {f1:.3f}")
    assert f1 >= 0.76

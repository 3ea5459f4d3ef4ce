"""Classical nuclei on the real DSB2018 crop, scored against its manual mask."""

import numpy as np
import pytest

from stseg_dist.config import PipelineConfig
from stseg_dist.nuclei.classical import ClassicalNuclei, otsu_from_histogram, smooth, tile_histogram
from stseg_dist.errors import InputError
from tests.conftest import shared_data


class _FakeChipMeta:  # pixel size only: the kernel is tested on an in-memory image
    pixel_size_um = 0.5


def _matched_f1(pred, truth, thr=0.5):
    from skimage.metrics import contingency_table

    ct = contingency_table(truth, pred).tocoo()
    inter = {}
    for t, p, v in zip(ct.row, ct.col, ct.data):
        if t and p:
            inter[(t, p)] = v
    at = np.bincount(truth.ravel())
    ap = np.bincount(pred.ravel())
    matched = sum(1 for (t, p), v in inter.items() if v / (at[t] + ap[p] - v) >= thr)
    nt, np_ = len(np.unique(truth)) - 1, len(np.unique(pred)) - 1
    return 2 * matched / (nt + np_)


@pytest.mark.realdata
def test_classical_on_dsb2018():
    import tifffile

    img = tifffile.imread(shared_data("dsb2018_nuclei", "img2d.tif")).astype(np.float32)
    truth = tifffile.imread(shared_data("dsb2018_nuclei", "mask2d.tif")).astype(np.int64)
    cfg = PipelineConfig()
    cfg.nuclei.classical.sigma_um = 0.5
    cfg.nuclei.classical.min_area_um2 = 4
    cfg.nuclei.classical.min_distance_um = 2.5
    cfg.nuclei.classical.footprint_um = 3
    backend = ClassicalNuclei(cfg, _FakeChipMeta())
    vmax = float(img.max())
    backend.prepare({"threshold": otsu_from_histogram(tile_histogram(smooth(img, 1.0), vmax), vmax)})
    pred = backend.segment_array(img)
    f1 = _matched_f1(pred.astype(np.int64), truth)
    print(f"classical nuclei on dsb2018: {pred.max()} objects vs {truth.max()} true, matched F1 {f1:.3f}")
    assert f1 > 0.6


def test_flat_image_rejected():
    with pytest.raises(InputError, match="single intensity"):
        otsu_from_histogram(tile_histogram(np.full((10, 10), 5.0), 10.0), 10.0)
    with pytest.raises(InputError, match="empty"):
        otsu_from_histogram(np.zeros(4096, np.int64), 1.0)

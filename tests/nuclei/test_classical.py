"""Classical nuclei on the real DSB2018 crop, scored against its manual mask."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from stseg_dist.config import PipelineConfig
from stseg_dist.nuclei.classical import ClassicalNuclei, otsu_from_histogram, smooth, tile_histogram
from stseg_dist.errors import InputError
from tests.conftest import shared_data


class _FakeChipMeta:  # pixel size only: the kernel is tested on an in-memory image
    pixel_size_um = 0.5


LEGACY = {  # every switch of docs/nuclei_classical.md off: the previous backend
    "normalise": False,
    "foreground": "otsu",
    "seeds": "shape",
    "peak_fraction": None,
    "learn_size": False,
}


def _config(legacy=False, **classical):
    cfg = PipelineConfig()
    for k, v in {**(LEGACY if legacy else {}), **classical}.items():
        setattr(cfg.nuclei.classical, k, v)
    return cfg


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
    backend.load({"threshold": otsu_from_histogram(tile_histogram(smooth(img, 1.0), vmax), vmax)})
    pred = backend.segment_array(img)
    f1 = _matched_f1(pred.astype(np.int64), truth)
    print(
        f"classical nuclei on dsb2018: {pred.max()} objects vs {truth.max()} true, matched F1 {f1:.3f}"
    )
    assert f1 > 0.6


def test_flat_image_rejected():
    with pytest.raises(InputError, match="single intensity"):
        otsu_from_histogram(tile_histogram(np.full((10, 10), 5.0), 10.0), 10.0)
    with pytest.raises(InputError, match="empty"):
        otsu_from_histogram(np.zeros(4096, np.int64), 1.0)


def _glow_image(seed=0):
    """Nuclei (radius 6 px) on a dark field, half of them on a broad glow as bright as a dim nucleus."""
    rng = np.random.default_rng(seed)
    h, w = 160, 320
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float32)
    img[:, w // 2 :] += 0.6  # the glow over dense tissue
    truth = np.zeros((h, w), np.int64)
    centres = [(r, c) for r in range(20, h - 10, 30) for c in range(20, w - 10, 30)]
    for k, (r, c) in enumerate(centres, start=1):
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= 36
        img[disk] += 1.0
        truth[disk] = k
    return img + rng.normal(0, 0.03, img.shape).astype(np.float32), truth


def _segment(img, background_um):
    from stseg_dist.nuclei.classical import enhance

    cfg = _config(legacy=True, background_um=background_um)
    backend = ClassicalNuclei(cfg, _FakeChipMeta())
    sm = enhance(img, cfg.nuclei.classical, _FakeChipMeta.pixel_size_um)
    vmax = float(sm.max())
    backend.load({"threshold": otsu_from_histogram(tile_histogram(sm.clip(0), vmax), vmax)})
    return backend.segment_array(img).astype(np.int64), sm > backend.threshold


def test_background_subtraction_separates_nuclei_on_a_glow():
    img, truth = _glow_image()
    (plain, plain_mask), (flat, _) = _segment(img, None), _segment(img, 15.0)
    # a global threshold takes the whole glowing half as foreground, and its nuclei are lost in it
    assert plain_mask[:, 170:].mean() > 0.9
    assert (
        _matched_f1(plain[:, 170:], truth[:, 170:]) < 0.3
        and _matched_f1(flat[:, 170:], truth[:, 170:]) > 0.95
    )
    assert _matched_f1(flat, truth) > 0.95 and _matched_f1(plain, truth) < 0.7


def test_background_um_must_be_positive():
    from stseg_dist.errors import ConfigError

    cfg = PipelineConfig()
    cfg.nuclei.classical.background_um = -3.0
    with pytest.raises(ConfigError, match="nuclei.classical.background_um must be positive"):
        ClassicalNuclei(cfg, _FakeChipMeta())


def _chains(seed=0, shape=(400, 400)):
    """Touching Gaussian-blob nuclei in long wavy chains (clusters far longer than the context),
    plus scattered ones."""
    rng = np.random.default_rng(seed)
    h, w = shape
    centres = [
        (y0 + 6 * np.sin(x / 17.0 + y0), x)
        for y0 in (60, 200, 330)
        for x in np.arange(5, w - 5, 10.5)
    ]
    centres += [
        (y, x0 + 4 * np.cos(y / 9.0 + x0)) for x0 in (120, 290) for y in np.arange(5, h - 5, 10.0)
    ]
    centres += list(zip(rng.uniform(0, h, 80), rng.uniform(0, w, 80)))
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(200, 20, shape).astype(np.float32)
    for (y, x), s in zip(centres, rng.uniform(3.2, 4.2, len(centres))):
        img += rng.uniform(2200, 3200) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s**2))
    return img


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_depend_only_on_pixels_within_the_context(seed):
    """Any window gives the whole image's nuclei at every pixel at least context_px from its cut
    edges (edges on the image border are not cuts): the same pixels, grouped the same way, even
    where a cut crosses a cluster of touching nuclei several times longer than that."""
    img = _chains(seed)
    backend = ClassicalNuclei(PipelineConfig(), _FakeChipMeta())
    backend.load({"threshold": 1000.0})
    full = backend.segment_array(img)
    ctx = backend.context_px()
    from stseg_dist.nuclei.classical import enhance

    clusters, _ = ndi.label(enhance(img, backend.config.nuclei.classical, 0.5) > backend.threshold)
    assert (
        max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(clusters))
        > 3 * ctx
    )
    rng = np.random.default_rng(seed)
    h, w = img.shape
    for _ in range(6):
        r0, c0 = rng.integers(0, h - 2 * ctx - 10), rng.integers(0, w - 2 * ctx - 10)
        r1, c1 = (
            r0 + rng.integers(2 * ctx + 10, h - r0 + 1),
            c0 + rng.integers(2 * ctx + 10, w - c0 + 1),
        )
        win = backend.segment_array(img[r0:r1, c0:c1])
        zone = np.zeros(win.shape, bool)
        zone[
            ctx if r0 else 0 : win.shape[0] - (ctx if r1 < h else 0),
            ctx if c0 else 0 : win.shape[1] - (ctx if c1 < w else 0),
        ] = True
        f, g = full[r0:r1, c0:c1][zone].astype(np.int64), win[zone].astype(np.int64)
        np.testing.assert_array_equal(f > 0, g > 0)
        pairs = np.unique(np.stack([f[f > 0], g[g > 0]]), axis=1)
        assert len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))  # one-to-one

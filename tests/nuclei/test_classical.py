"""Classical nuclei on the real DSB2018 crop, scored against its manual mask."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from stseg_dist.config import PipelineConfig
from stseg_dist.errors import InputError
from stseg_dist.nuclei.classical import ClassicalNuclei, otsu_from_histogram, smooth, tile_histogram
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


DENSE = {  # the dense-tissue switches, as in configs/xenium.yaml and configs/cosmx.yaml
    "normalise": True,
    "foreground": "log_otsu",
    "seeds": "shape_intensity",
    "peak_fraction": 0.5,
    "learn_size": True,
}


def _config(legacy=False, **classical):
    cfg = PipelineConfig()
    for k, v in {**(LEGACY if legacy else DENSE), **classical}.items():
        setattr(cfg.nuclei.classical, k, v)
    return cfg


def _matched_f1(pred, truth, thr=0.5):
    from skimage.metrics import contingency_table

    ct = contingency_table(truth, pred).tocoo()
    inter = {}
    for t, p, v in zip(ct.row, ct.col, ct.data, strict=True):
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
        f"classical nuclei on dsb2018: {pred.max()} objects vs {truth.max()} true, matched F1 "
        f"{f1:.3f}"
    )
    assert f1 > 0.6


def test_flat_image_rejected():
    with pytest.raises(InputError, match="single intensity"):
        otsu_from_histogram(tile_histogram(np.full((10, 10), 5.0), 10.0), 10.0)
    with pytest.raises(InputError, match="empty"):
        otsu_from_histogram(np.zeros(4096, np.int64), 1.0)


def _glow_image(seed=0):
    """Nuclei (radius 6 px) on a dark field, half of them on a broad glow as bright as a dim
    nucleus.
    """
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
    plus scattered ones.
    """
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
    centres += list(zip(rng.uniform(0, h, 80), rng.uniform(0, w, 80), strict=True))
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(200, 20, shape).astype(np.float32)
    for (y, x), s in zip(centres, rng.uniform(3.2, 4.2, len(centres)), strict=True):
        img += rng.uniform(2200, 3200) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s**2))
    return img


#: states for the context test: the previous backend (the defaults), and the dense-tissue switches
#: at the largest diameter a run may learn (1.5 x nuclei.diameter_um = 24 px), where the reach is
#: longest
_STATES = {
    "legacy": (True, {"threshold": 1000.0}),
    "dense": (False, {"threshold": 0.3, "lo": 200.0, "hi": 3000.0, "diameter_px": 24.0}),
    "dense_local": (False, {"threshold": 0.3, "lo": 200.0, "hi": 3000.0, "diameter_px": 24.0}),
    "dense_valley": (False, {"threshold": 0.3, "lo": 200.0, "hi": 3000.0, "diameter_px": 24.0}),
}
_SWITCHES = {
    "dense_local": {"shape_mask": "local", "seed_dynamic": 0.025},
    "dense_valley": {"shape_mask": "local", "seed_dynamic": 0.025, "shape_valley": 0.06},
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("variant", sorted(_STATES))
def test_labels_depend_only_on_pixels_within_the_context(seed, variant):
    """Any window gives the whole image's nuclei at every pixel at least context_px from its cut
    edges (edges on the image border are not cuts): the same pixels, grouped the same way, even
    where a cut crosses a cluster of touching nuclei several times longer than that.
    """
    legacy, state = _STATES[variant]
    backend = ClassicalNuclei(_config(legacy=legacy, **_SWITCHES.get(variant, {})), _FakeChipMeta())
    size = max(400, 3 * backend.context_px() + 60)  # clusters longer than 3 contexts
    img = _chains(seed, (size, size))
    backend.load(state)
    full = backend.segment_array(img)
    ctx = backend.context_px()
    from stseg_dist.nuclei.classical import enhance

    clusters, _ = ndi.label(
        enhance(backend._normalised(img), backend.config.nuclei.classical, 0.5) > backend.threshold
    )
    assert (
        max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(clusters))
        > 3 * ctx
    )
    _assert_windows_exact(backend, img, full, ctx, np.random.default_rng(seed), 6)


def _assert_windows_exact(backend, img, full, ctx, rng, n):
    """Labels in any window's interior (a context from each cut edge) equal the whole image's,
    up to renumbering: the backend reads nothing beyond ``context_px``.
    """
    h, w = img.shape
    for _ in range(n):
        r0, c0 = rng.integers(0, h - 2 * ctx - 10), rng.integers(0, w - 2 * ctx - 10)
        r1 = r0 + rng.integers(2 * ctx + 10, h - r0 + 1)
        c1 = c0 + rng.integers(2 * ctx + 10, w - c0 + 1)
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


# -- the dense-tissue parts, each on a small image where it matters ------------------------------


class _ImageChip:
    """An in-memory chip: enough of :class:`~stseg_dist.io.chip.Chip` for prepare and segment."""

    pixel_size_um = 0.5

    def __init__(self, image):
        self.image = image

    def _image_array(self):
        return self.image

    def read_image(self, rows, cols, channel=0):
        return self.image[rows, cols]


def _prepared(img, cfg, tile_um=1e6):
    """The backend after its chip-wide prepare on ``img`` cut into tiles of ``tile_um``."""
    from stseg_dist.lifecycle import PrepareContext
    from stseg_dist.tiling import make_grid

    chip = _ImageChip(img)
    backend = ClassicalNuclei(cfg, chip)
    halo_um = backend.context_px() * chip.pixel_size_um
    grid = make_grid(img.shape, chip.pixel_size_um, tile_um, halo_um, 16)
    ctx = PrepareContext(chip, cfg, grid, [], lambda fn, idx, desc="": [fn(grid[i]) for i in idx])
    state = backend.prepare(ctx)
    backend.load(state)
    return backend, state, len(grid)


def _blobs(centres, radii, amplitudes, shape, background=100.0, blur=1.5, seed=0):
    """Discs of the given radii and brightness, blurred like a stain, with noise; and their
    truth.
    """
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, np.float32)
    truth = np.zeros(shape, np.int64)
    for k, ((r, c), rad, amp) in enumerate(zip(centres, radii, amplitudes, strict=False), start=1):
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
        img[disk] += amp
        truth[disk & (truth == 0)] = k
    img = ndi.gaussian_filter(img, blur)
    return img + np.random.default_rng(seed).normal(0, 5, shape).astype(np.float32), truth


def test_percentiles_from_histogram_match_numpy():
    from stseg_dist.nuclei.classical import N_RAW_BINS, percentiles_from_histogram

    img = np.random.default_rng(0).gamma(2.0, 300.0, (200, 200)).astype(np.uint16)
    lo, hi = percentiles_from_histogram(
        tile_histogram(img, 65535.0, bins=N_RAW_BINS), 65535.0, [1, 99.5]
    )
    assert abs(lo - np.percentile(img, 1)) <= 1.5 and abs(hi - np.percentile(img, 99.5)) <= 1.5


def _sixty_blobs():
    """60 blobs of random size and brightness on 240 x 240 px, as uint16, and their truth."""
    rng = np.random.default_rng(1)
    centres = list(zip(rng.uniform(10, 230, 60), rng.uniform(10, 230, 60), strict=True))
    img, truth = _blobs(centres, rng.uniform(5, 8, 60), rng.uniform(300, 1500, 60), (240, 240))
    return img.astype(np.uint16), truth


@pytest.mark.parametrize(
    "switches",
    [{}, _SWITCHES["dense_local"], _SWITCHES["dense_valley"]],
    ids=["dense", "seams", "valley"],
)
def test_prepare_state_is_the_same_at_every_tiling(switches):
    """Percentiles, threshold and learned diameter are chip-wide: 1 tile or 16 give the same
    (the seam switches change the first pass that the diameter is learned from).
    """
    img, _ = _sixty_blobs()
    _, one, n1 = _prepared(img, _config(**switches))
    _, many, n16 = _prepared(img, _config(**switches), tile_um=30)
    assert n1 == 1 and n16 == 16
    assert one == many and one["diameter_px"] is not None


def test_log_otsu_keeps_dim_nuclei_a_linear_otsu_drops():
    """Bright and dim (a fifth as bright) isolated nuclei: Otsu on the stain cuts between the two
    kinds, Otsu on its log between the background and both.
    """
    centres = [(20 + 40 * i, 20 + 40 * j) for i in range(4) for j in range(4)]
    amps = [2000.0 if (i + j) % 2 else 400.0 for i in range(4) for j in range(4)]
    img, truth = _blobs(centres, [7] * 16, amps, (160, 160))
    scores = {}
    for fg in ("otsu", "log_otsu"):
        backend, _, _ = _prepared(img, _config(foreground=fg, learn_size=False))
        scores[fg] = _matched_f1(backend.segment_array(img).astype(np.int64), truth)
    assert scores["otsu"] < 0.7 and scores["log_otsu"] > 0.95


def _touching_pair(gap_px=11.0):
    """Two nuclei whose union has no neck (centres gap_px apart, radius 8 px): one oval mask."""
    shape = (60, 60)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100.0, np.float32)
    truth = np.zeros(shape, np.int64)
    for k, c in enumerate((30 - gap_px / 2, 30 + gap_px / 2), start=1):
        img += 1500.0 * np.exp(-((yy - 30) ** 2 + (xx - c) ** 2) / (2 * 4.5**2))
        truth[((yy - 30) ** 2 + (xx - c) ** 2 <= 36) & (truth == 0)] = k
    return img, truth


def test_intensity_seeds_split_touching_nuclei_with_no_neck():
    """The distance map of the pair's oval mask has one summit; the stain has two."""
    img, _ = _touching_pair()
    state = {"threshold": 0.2, "lo": 100.0, "hi": 1600.0}
    n = {}
    for seeds in ("shape", "shape_intensity"):
        backend = ClassicalNuclei(_config(seeds=seeds, learn_size=False), _FakeChipMeta())
        backend.load(state)
        labels = backend.segment_array(img)
        n[seeds] = len(np.unique(labels[labels > 0]))
        if seeds == "shape_intensity":  # each nucleus's centre goes to a different label
            assert labels[30, 25] != labels[30, 35] and labels[30, 25] and labels[30, 35]
    assert n == {"shape": 1, "shape_intensity": 2}


def test_peak_fraction_cuts_a_bright_nucleus_at_its_own_level():
    """A bright nucleus's blurred glow rises above a threshold low enough for a dim neighbour;
    cut at half its own peak it keeps its size, and the dim neighbour is still found.
    """
    img, truth = _blobs([(40, 30), (40, 75)], [8, 8], [4000.0, 300.0], (80, 110), blur=3.0)
    state = {"threshold": 0.05, "lo": 100.0, "hi": 4100.0}
    area = {}
    for pf in (None, 0.5):
        backend = ClassicalNuclei(_config(peak_fraction=pf, learn_size=False), _FakeChipMeta())
        backend.load(state)
        labels = backend.segment_array(img).astype(np.int64)
        bright, dim = labels[40, 30], labels[40, 75]
        assert bright and dim and bright != dim
        area[pf] = (labels == bright).sum() / (truth == 1).sum()
    assert area[None] > 1.5 and 0.75 < area[0.5] < 1.3


@pytest.mark.parametrize("nominal_um, expected_px", [(8.0, 16.0), (5.0, 15.0)])
def test_size_is_learned_from_the_chip(nominal_um, expected_px):
    """Nuclei 16 px across are learned as such from a nominal 8 µm (16 px); from a nominal 5 µm
    (10 px) the learned diameter stops at its bound, 1.5 x 10 px.
    """
    rng = np.random.default_rng(2)
    centres = [(15 + 30 * i + rng.uniform(-3, 3), 15 + 30 * j) for i in range(6) for j in range(6)]
    img, _ = _blobs(centres, [8] * 36, rng.uniform(500, 1500, 36), (180, 180))
    cfg = _config()
    cfg.nuclei.diameter_um = nominal_um
    _, state, _ = _prepared(img, cfg)
    assert abs(state["diameter_px"] - expected_px) <= 2.0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("foreground", "mean", "foreground"),
        ("seeds", "blobs", "seeds"),
        ("peak_fraction", 1.5, "peak_fraction must be in"),
        ("normalise_percentiles", [99.0, 1.0], "normalise_percentiles must be"),
        ("seed_radius", 0.0, "seed_radius must be positive"),
        ("intensity_weight", -1.0, "intensity_weight must not be negative"),
        ("seed_dynamic", -0.1, "seed_dynamic must not be negative"),
        ("shape_mask", "blobs", "shape_mask"),
        ("shape_sigma", 0.0, "shape_sigma must be positive"),
        ("shape_background", 0.04, "shape_sigma must be below nuclei.classical.shape_background"),
        ("classifier_weight", -0.5, "nuclei.classical.classifier_weight must not be negative"),
        ("classifier_sigma", 0.0, "nuclei.classical.classifier_sigma must be positive"),
        ("oversize_area", 1.0, "nuclei.classical.oversize_area must be above 1"),
        ("oversize_dip", 0.0, r"nuclei.classical.oversize_dip must be in \(0, 1\)"),
        ("oversize_dip", 1.5, r"nuclei.classical.oversize_dip must be in \(0, 1\)"),
        ("shape_valley", -0.1, "nuclei.classical.shape_valley must not be negative"),
        ("valley_sigma", 0.0, "nuclei.classical.valley_sigma must be positive"),
    ],
)
def test_bad_classical_settings_rejected(key, value, message):
    from stseg_dist.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ClassicalNuclei(_config(**{key: value}), _FakeChipMeta())


@pytest.mark.parametrize("value", [0, 700])
def test_flat_stain_rejected_by_prepare(value):
    """A stain with one value everywhere (empty, or flat) has no nuclei to find: a clear error."""
    with pytest.raises(InputError, match="single intensity"):
        _prepared(np.full((64, 64), value, np.uint16), _config())


def test_seed_dynamic_merges_texture_peaks_on_a_generated_chip(tmp_path):
    """Generated nuclei are flat discs with noise: without the h-maxima test their noise peaks
    become seeds (more nuclei than the truth); with it the count and the match come back.
    """
    import zarr

    from stseg_dist.synth import synth_chip

    synth_chip(str(tmp_path / "chip"), 100, 100, seed=11)
    img = zarr.open_array(str(tmp_path / "chip" / "image.zarr"), mode="r")[:]
    img = img[0] if img.ndim == 3 else img
    truth = zarr.open_array(str(tmp_path / "chip" / "truth" / "nuclei.zarr"), mode="r")[:]
    n_true = len(np.unique(truth)) - 1
    n, f1 = {}, {}
    for dyn in (0.0, 0.02):
        backend, _, _ = _prepared(img, _config(seed_dynamic=dyn))
        labels = backend.segment_array(img).astype(np.int64)
        n[dyn], f1[dyn] = len(np.unique(labels)) - 1, _matched_f1(labels, truth.astype(np.int64))
    assert n[0.0] > n_true + 3 and abs(n[0.02] - n_true) <= 2
    assert f1[0.02] > f1[0.0] + 0.03


def _bright_and_dim_touching(dim=0.6):
    """A bright nucleus and a touching one ``dim`` times as bright (radius 9 px each), on a glow
    that keeps both and their surroundings in the foreground.
    """
    shape = (70, 80)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 100.0 + 400.0 * np.exp(-((yy - 35) ** 2 + (xx - 40) ** 2) / (2 * 25**2))
    truth = np.zeros(shape, np.int64)
    for k, (c, amp) in enumerate(((31, 1500.0), (49, 1500.0 * dim)), start=1):
        disk = (yy - 35) ** 2 + (xx - c) ** 2 <= 81
        img[disk & (truth == 0)] += amp
        truth[disk & (truth == 0)] = k
    img = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    return img + np.random.default_rng(0).normal(0, 5, shape).astype(np.float32), truth


def test_local_shape_mask_splits_a_dim_nucleus_from_its_bright_neighbour():
    """The foreground holds both nuclei with no neck, and the bright one's slope runs through the
    dim one, so the stain has one summit: one nucleus. Measured on the pixels brighter than their
    surroundings, the distance has a neck at the seam: two.
    """
    img, truth = _bright_and_dim_touching()
    state = {"threshold": 0.05, "lo": 100.0, "hi": 1600.0, "diameter_px": 18.0}
    n, f1 = {}, {}
    for shape_mask in ("foreground", "local"):
        cfg = _config(shape_mask=shape_mask, seed_dynamic=0.025, learn_size=False)
        backend = ClassicalNuclei(cfg, _FakeChipMeta())
        backend.load(state)
        labels = backend.segment_array(img).astype(np.int64)
        n[shape_mask] = len(np.unique(labels[labels > 0]))
        f1[shape_mask] = _matched_f1(labels, truth)
    assert n == {"foreground": 1, "local": 2}
    assert f1["local"] > 0.95 > 0.7 > f1["foreground"]


def _elongated_pair_with_a_faint_seam():
    """Two touching elongated nuclei, side by side (centres 14 px apart, 9 x 12.6 px radii), the
    seam between them only 10% darker, on a glow; and their truth.
    """
    shape = (70, 90)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 100.0 + 400.0 * np.exp(-((yy - 35) ** 2 + (xx - 45) ** 2) / (2 * 25**2))
    truth = np.zeros(shape, np.int64)
    for k, c in enumerate((38, 52), start=1):
        disk = ((yy - 35) / 1.4) ** 2 + (xx - c) ** 2 <= 81
        img[disk & (truth == 0)] += 1500.0
        truth[disk & (truth == 0)] = k
    img[(np.abs(xx - 45) <= 0.5) & (truth > 0)] -= 150.0
    img = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    return img + np.random.default_rng(0).normal(0, 5, shape).astype(np.float32), truth


def test_shape_valley_splits_touching_nuclei_at_a_faint_seam():
    """The local-contrast mask has no neck at a seam only 10% darker, so the pair stays one
    nucleus; taking the stain's valleys out of the shape mask cuts it there into the two.
    """
    img, truth = _elongated_pair_with_a_faint_seam()
    state = {"threshold": 0.05, "lo": 100.0, "hi": 1600.0, "diameter_px": 18.0}
    n, f1 = {}, {}
    for valley in (0.0, 0.06):
        cfg = _config(**_SWITCHES["dense_local"], shape_valley=valley, learn_size=False)
        backend = ClassicalNuclei(cfg, _FakeChipMeta())
        backend.load(state)
        labels = backend.segment_array(img).astype(np.int64)
        n[valley] = len(np.unique(labels[labels > 0]))
        f1[valley] = _matched_f1(labels, truth)
    assert n == {0.0: 1, 0.06: 2}
    assert f1[0.06] == 1.0


def test_shape_valley_widens_the_context_only_beyond_its_filter():
    """The Hessian's reach (4 valley_sigma diameters) is inside the local mask's at the default
    0.12; at 0.6 diameters it is wider, and the halo covers it.
    """
    seams = ClassicalNuclei(_config(**_SWITCHES["dense_local"]), _FakeChipMeta()).context_px()
    assert ClassicalNuclei(_config(**_SWITCHES["dense_valley"]), _FakeChipMeta()).context_px() == (
        seams
    )
    wide = {**_SWITCHES["dense_valley"], "valley_sigma": 0.6}
    d_max = 1.5 * 8.0 / _FakeChipMeta.pixel_size_um
    grown = ClassicalNuclei(_config(**wide), _FakeChipMeta()).context_px() - seams
    assert grown == int(4 * 0.6 * d_max + 0.5) + 1 - int(4 * 0.5 * d_max + 0.5)


def test_local_shape_mask_widens_the_context():
    """The surroundings are the stain smoothed over shape_background diameters: the halo covers
    that filter's reach at the largest diameter a run may learn.
    """
    plain = ClassicalNuclei(_config(), _FakeChipMeta()).context_px()
    local = ClassicalNuclei(_config(shape_mask="local"), _FakeChipMeta()).context_px()
    d_max = 1.5 * 8.0 / _FakeChipMeta.pixel_size_um
    assert local - plain >= int(4 * 0.5 * d_max + 0.5) - int(4 * 0.15 * d_max + 0.5)


# -- the pixel classifier trained on the chip's own nuclei (pixel_classifier) --------------------

SEAMS_AND_CLASSIFIER = {**_SWITCHES["dense_local"], "pixel_classifier": True}


def test_pixel_classifier_needs_intensity_seeds():
    from stseg_dist.errors import ConfigError

    cfg = _config(seeds="shape", pixel_classifier=True)
    with pytest.raises(ConfigError, match="nuclei.classical.pixel_classifier needs"):
        ClassicalNuclei(cfg, _FakeChipMeta())


def _assert_same_state(one: dict, many: dict):
    assert one.keys() == many.keys()
    for k in one:
        if isinstance(one[k], np.ndarray):
            np.testing.assert_array_equal(one[k], many[k], err_msg=k)
        else:
            assert one[k] == many[k], k


def test_pixel_classifier_is_the_same_at_every_tiling():
    """Its training set comes from a chip-wide lattice, so 1 tile and 16 give the same samples
    (hence the same forest); it learns nucleus cores against background.
    """
    from stseg_dist.nuclei import pixel_classifier as pc

    img, truth = _sixty_blobs()
    b1, one, n1 = _prepared(img, _config(**SEAMS_AND_CLASSIFIER))
    b16, many, n16 = _prepared(img, _config(**SEAMS_AND_CLASSIFIER), tile_um=30)
    assert n1 == 1 and n16 == 16
    _assert_same_state(one, many)
    assert one["classifier_interior_px"] > 100 and one["classifier_other_px"] > 100
    np.testing.assert_array_equal(b1.segment_array(img), b16.segment_array(img))
    x = b1._normalised(img)
    p = pc.interior_probability(b1.classifier, x, np.ones(img.shape, bool), b1.diameter_px)
    cores = ndi.binary_erosion(truth > 0, iterations=3)
    assert p[cores].mean() > 0.7 and p[~ndi.binary_dilation(truth > 0, iterations=6)].mean() < 0.1


def test_pixel_classifier_labels_depend_only_on_pixels_within_the_context():
    """As the window test above, with the classifier on: its features and the smoothing of its
    probability are covered by context_px (which grows by their reach).
    """
    seams = ClassicalNuclei(_config(**_SWITCHES["dense_local"]), _FakeChipMeta()).context_px()
    cfg = _config(**SEAMS_AND_CLASSIFIER)
    ctx = ClassicalNuclei(cfg, _FakeChipMeta()).context_px()
    assert ctx > seams
    img = _chains(0, (2 * ctx + 120, 3 * ctx + 60)).astype(np.float32)
    backend, state, _ = _prepared(img, cfg)
    assert state["classifier_interior_px"] > 100
    full = backend.segment_array(img)
    _assert_windows_exact(backend, img, full, ctx, np.random.default_rng(0), 4)


# -- the oversize split (nuclei/oversize.py) ------------------------------------------------------

OVERSIZE = {**_SWITCHES["dense_local"], "oversize_split": True}


def _pairs(seed, shape, sep=8.0, sigma=3.5, singles=False):
    """Pairs of touching Gaussian nuclei ``sep`` px apart, at random angles and brightness (every
    other one a single nucleus with ``singles``): with a learned diameter of 10 px the watershed
    keeps some pairs whole.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(200, 20, shape).astype(np.float32)
    for y in np.arange(15, h - 15, 30.0):
        for x in np.arange(15, w - 15, 30.0):
            angle, amp = rng.uniform(0, np.pi), rng.uniform(400, 3000)
            single = singles and (x + y) % 60 == 30
            for sign in (0,) if single else (-1, 1):
                cy, cx = y + sign * sep / 2 * np.sin(angle), x + sign * sep / 2 * np.cos(angle)
                img += (
                    amp
                    * rng.uniform(0.8, 1.2)
                    * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
                )
    return img


def test_oversize_split_cuts_two_nuclei_and_keeps_one_large_nucleus():
    """One label over two touching discs with a darker seam is cut into the two discs; one disc
    of the same area, evenly stained, stays whole.
    """
    from stseg_dist.nuclei.oversize import split_oversize

    yy, xx = np.mgrid[:60, :80]
    left = (yy - 30) ** 2 + (xx - 30) ** 2 <= 10**2
    right = (yy - 30) ** 2 + (xx - 48) ** 2 <= 10**2
    stain = ndi.gaussian_filter(1.0 * left + 1.0 * right - 0.6 * (left & right), 1.0)
    pair = split_oversize((left | right).astype(np.uint32), stain, 20.0, 1.25, 0.1)
    assert len(np.unique(pair)) == 3
    assert _matched_f1(pair.astype(np.int64), left + 2 * (right & ~left), 0.7) == 1.0
    big = (yy - 30) ** 2 + (xx - 40) ** 2 <= (left | right).sum() / np.pi
    stain = ndi.gaussian_filter(big * 1.0, 1.0)
    np.testing.assert_array_equal(
        split_oversize(big.astype(np.uint32), stain, 20.0, 1.25, 0.1), big
    )


def test_oversize_split_is_the_same_at_every_tiling():
    """Prepare at 1 tile and 16 gives the same state and labels, and the split cuts some of the
    pairs the watershed keeps whole (the size is learned without it).
    """
    img = (_pairs(0, (240, 240), singles=True) / 4).astype(np.uint16)
    b1, one, n1 = _prepared(img, _config(**OVERSIZE))
    b16, many, n16 = _prepared(img, _config(**OVERSIZE), tile_um=30)
    assert n1 == 1 and n16 == 16
    _assert_same_state(one, many)
    _, plain, _ = _prepared(img, _config(**_SWITCHES["dense_local"]))
    assert plain == one  # the learned size does not depend on the split
    labels = b1.segment_array(img)
    np.testing.assert_array_equal(labels, b16.segment_array(img))
    assert len(np.unique(labels)) > len(np.unique(b1.segment_array(img, oversize=False)))


def test_oversize_split_labels_depend_only_on_pixels_within_the_context():
    """As the window test above, with the oversize split on: a nucleus is cut the same way in
    every window that holds it and the context.
    """
    backend = ClassicalNuclei(_config(**OVERSIZE), _FakeChipMeta())
    ctx = backend.context_px()
    assert ctx == ClassicalNuclei(_config(**_SWITCHES["dense_local"]), _FakeChipMeta()).context_px()
    img = _pairs(1, (2 * ctx + 120, 2 * ctx + 120))
    backend.load({"threshold": 0.3, "lo": 200.0, "hi": 3000.0, "diameter_px": 10.0})
    full = backend.segment_array(img)
    assert len(np.unique(full)) > len(np.unique(backend.segment_array(img, oversize=False))) + 5
    _assert_windows_exact(backend, img, full, ctx, np.random.default_rng(0), 4)

import numpy as np

from stseg_dist.stitching import assign_global_ids, owned_objects, paint_window
from stseg_dist.tiling import make_grid


def _disk_labels(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.uint32)
    for i, (y, x) in enumerate(centres, start=1):
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    return lab


def test_each_object_owned_once_and_painted_back_exactly():
    rng = np.random.default_rng(1)
    shape = (200, 260)
    centres = [
        (int(y), int(x))
        for y, x in zip(rng.integers(5, 195, 60), rng.integers(5, 255, 60), strict=True)
    ]
    truth = _disk_labels(shape, centres, 4)
    grid = make_grid(shape, 1.0, 64, 12, 32)
    owned = []
    for t in grid:
        r0, r1, c0, c1 = t.window
        owned.append(owned_objects(truth[r0:r1, c0:c1], t, shape))
    # every distinct object of the truth is owned by exactly one tile
    assert sum(len(o) for o in owned) == len(np.unique(truth)) - 1
    tables = assign_global_ids([(o.area, o.sum_r, o.sum_c) for o in owned])
    whole = paint_window((0, shape[0], 0, shape[1]), zip(owned, tables, strict=False))
    # same partition as the truth, up to renumbering
    pairs = set(zip(truth.ravel().tolist(), whole.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(truth))
    assert ((truth > 0) == (whole > 0)).all()


def test_global_ids_do_not_depend_on_the_tiling():
    shape = (150, 150)
    truth = _disk_labels(shape, [(20, 20), (20, 100), (90, 60), (130, 130), (75, 75)], 5)
    results = []
    for tile in (150, 40, 32):
        grid = make_grid(shape, 1.0, tile, 15, 8)
        owned = [owned_objects(truth[t.window_slices], t, shape) for t in grid]
        tables = assign_global_ids([(o.area, o.sum_r, o.sum_c) for o in owned])
        results.append(paint_window((0, 150, 0, 150), zip(owned, tables, strict=False)))
    assert (results[0] == results[1]).all() and (results[0] == results[2]).all()
    # numbered in raster order of centroids
    assert results[0][20, 20] == 1 and results[0][20, 100] == 2 and results[0][130, 130] == 5


def test_clipped_objects_are_counted():
    shape = (100, 100)
    truth = np.zeros(shape, np.uint32)
    truth[10:90, 45:55] = 1  # long object crossing the window edge of a small tile
    grid = make_grid(shape, 1.0, 32, 4, 32)
    owned = [owned_objects(truth[t.window_slices], t, shape) for t in grid]
    assert sum(o.n_clipped for o in owned) >= 1


def test_paint_conflict_is_order_independent():
    from stseg_dist.stitching.ownership import OwnedObjects

    a = OwnedObjects(
        0, np.array([[1, 1]], np.uint32), (0, 0), np.array([2]), np.array([0]), np.array([1])
    )
    b = OwnedObjects(
        1, np.array([[1, 1]], np.uint32), (0, 1), np.array([2]), np.array([0]), np.array([3])
    )
    ta, tb = np.array([0, 5], np.uint32), np.array([0, 9], np.uint32)
    x = paint_window((0, 1, 0, 3), [(a, ta), (b, tb)])
    y = paint_window((0, 1, 0, 3), [(b, tb), (a, ta)])
    assert (x == y).all() and x.tolist() == [[5, 9, 9]]

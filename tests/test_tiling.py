import numpy as np
import pytest

from stseg_dist.errors import ConfigError
from stseg_dist.tiling import make_grid


@pytest.mark.parametrize("shape", [(1000, 1500), (7, 9), (512, 512)])
def test_cores_partition_the_image(shape):
    grid = make_grid(shape, 0.5, 100, 20, 64)
    cover = np.zeros(shape, np.int32)
    for t in grid:
        cover[t.core_slices] += 1
        r0, r1, c0, c1 = t.window
        assert 0 <= r0 <= t.core[0] and t.core[1] <= r1 <= shape[0]
        assert 0 <= c0 <= t.core[2] and t.core[3] <= c1 <= shape[1]
        assert t.core[0] % grid.chunk_px == 0 and t.core[2] % grid.chunk_px == 0
    assert (cover == 1).all()


def test_neighbours_cover_overlapping_windows():
    grid = make_grid((1000, 1000), 1.0, 128, 150, 64)
    t = grid[len(grid) // 2]
    neigh = {n.index for n in grid.neighbours(t)}
    for other in grid:
        a, b = t.window, other.window
        overlap = a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]
        assert overlap == (other.index in neigh)


@pytest.mark.parametrize("args", [(0, 10, 64), (100, -1, 64), (100, 10, 0)])
def test_bad_tiling_rejected(args):
    with pytest.raises(ConfigError):
        make_grid((100, 100), 0.5, *args)

"""The store's pyramids, block by block: the levels spatialdata itself makes (labels exactly;
the image on even sizes, with the first-pixel shift fixed on odd ones), and one block or many
give the same store.
"""

from __future__ import annotations

import numpy as np
import pytest

from stseg_dist.export.pyramid import Raster, pyramid

sd = pytest.importorskip("spatialdata")

CASES = [  # (shape, dask chunk, halvings): odd sizes, chunks not dividing them, tiny levels
    ((200, 260), 64, 3),
    ((1001, 777), 128, 3),
    ((130, 65), 16, 4),
    ((513, 1030), 100, 2),
    ((257, 255), 64, 5),
]


def _levels(tree) -> list:
    keys = sorted(tree.children, key=lambda k: int(k.removeprefix("scale")))
    return [next(iter(tree[k].values())).data for k in keys]


def _plan(kind, levels, channel: bool = False) -> Raster:
    cut = slice(1, None) if channel else slice(None)
    return Raster.plan(
        kind,
        [a.shape[cut] for a in levels],
        [a.chunksize[cut] for a in levels],
        [a.chunksize[cut] for a in levels],
    )


@pytest.mark.parametrize(("shape", "chunk", "n"), CASES)
def test_labels_levels_are_spatialdatas(shape, chunk, n):
    """Nearest by index equals ome-zarr's blockwise float resize, which spatialdata uses for
    labels, edge blocks of odd sizes included.
    """
    import dask.array as da
    from spatialdata.models import Labels2DModel

    labels = np.random.default_rng(1).integers(0, 2**31, shape).astype(np.uint32)
    tree = Labels2DModel.parse(
        da.from_array(labels, chunks=chunk), dims=("y", "x"), scale_factors=[2] * n
    )
    want = [np.asarray(a) for a in _levels(tree)]
    got = pyramid(_plan("labels", _levels(tree)), labels)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("shape", "chunk", "n"), CASES)
def test_image_levels_are_two_by_two_means(shape, chunk, n):
    """Each level is the mean of pixels 2i, 2i+1 (cast back, as xarray's coarsen does); where
    the level above is even-sized that is spatialdata's own level, and where it is odd
    spatialdata's differs only by starting one pixel later (its first-pixel shift).
    """
    import dask.array as da
    from spatialdata.models import Image2DModel

    image = np.random.default_rng(2).integers(0, 2**16, (1, *shape)).astype(np.uint16)
    tree = Image2DModel.parse(
        da.from_array(image, chunks=(1, chunk, chunk)), dims=("c", "y", "x"), scale_factors=[2] * n
    )
    theirs = [np.asarray(a) for a in _levels(tree)]
    ours = pyramid(_plan("image", _levels(tree), channel=True), image)

    def means(top, oy=0, ox=0):
        h, w = top.shape[-2] // 2, top.shape[-1] // 2
        top = top.astype(np.float64)
        quads = (
            top[:, oy + i : oy + 2 * h : 2, ox + j : ox + 2 * w : 2] for i in (0, 1) for j in (0, 1)
        )
        return (sum(quads) / 4).astype(np.uint16)

    even = True
    for k in range(1, len(ours)):
        np.testing.assert_array_equal(ours[k], means(ours[k - 1]))
        assert ours[k].shape == theirs[k].shape
        oy, ox = theirs[k - 1].shape[-2] % 2, theirs[k - 1].shape[-1] % 2
        np.testing.assert_array_equal(theirs[k], means(theirs[k - 1], oy, ox))  # their shift
        even = even and not (oy or ox)
        if even:  # every level above even-sized: the same level as spatialdata's
            np.testing.assert_array_equal(ours[k], theirs[k])


@pytest.mark.parametrize(("shape", "chunk", "n"), CASES)
def test_every_block_holds_only_its_own_pixels(shape, chunk, n):
    """The phases' blocks cover each level once, in whole chunks, and computing every block on
    its own gives the whole raster's levels (labels: nearest; image: means).
    """
    import dask.array as da
    from spatialdata.models import Labels2DModel

    labels = np.random.default_rng(3).integers(0, 1000, shape).astype(np.uint32)
    tree = Labels2DModel.parse(
        da.from_array(labels, chunks=chunk), dims=("y", "x"), scale_factors=[2] * n
    )
    for kind, data in (("labels", labels), ("image", labels[None].astype(np.uint16))):
        raster = _plan(kind, _levels(tree))
        want = pyramid(raster, data)
        for block_max in (1, 4 * chunk, 10**6):
            got = [np.full_like(w, 7) for w in want]
            phases = raster.phases(block_max)
            assert phases[0][0] == 0 and phases[-1][1] == raster.n_levels - 1
            for first, last, side in phases:
                for y0, y1, x0, x1 in raster.blocks(first, side):
                    cy, cx = raster.chunks[first]
                    assert y0 % cy == 0 and x0 % cx == 0
                    block, by, bx = got[first][..., y0:y1, x0:x1], y0, x0
                    if first == 0:
                        block = data[..., y0:y1, x0:x1]
                        got[0][..., y0:y1, x0:x1] = block
                    for k in range(first + 1, last + 1):
                        block, by, bx = raster.down(block, k, by, bx)
                        got[k][..., by : by + block.shape[-2], bx : bx + block.shape[-1]] = block
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)

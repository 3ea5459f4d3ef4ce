"""Tile data: gene strings map onto the chip-wide vocabulary the scan built; a method's result
(TileResult) is checked and completed against its tile.
"""

import numpy as np
import pyarrow as pa
import pytest

from stseg_dist.tiledata import TileData, TileResult, TileTranscripts, gene_indices
from stseg_dist.tiling import Tile


def test_categorical_genes_may_list_genes_no_row_uses():
    """A stored dictionary (pandas categorical, written by a small crop of a larger panel) lists
    genes that occur in no row; the scan's vocabulary holds only those that occur.
    """
    column = pa.DictionaryArray.from_arrays(
        pa.array([0, 2, 2, 0], pa.int32()), pa.array(["a", "b", "c"])
    )
    vocabulary = {"a": 0, "c": 1}
    np.testing.assert_array_equal(gene_indices(column, vocabulary), [0, 1, 1, 0])
    np.testing.assert_array_equal(
        gene_indices(pa.chunked_array([column]), vocabulary), [0, 1, 1, 0]
    )
    np.testing.assert_array_equal(gene_indices(pa.array(["c", "a"]), vocabulary), [1, 0])


def test_a_used_gene_outside_the_vocabulary_is_named():
    with pytest.raises(KeyError, match="'b'"):
        gene_indices(pa.array(["a", "b"]), {"a": 0})


def small_tile_data() -> TileData:
    """A 6 x 8 window with two nuclei and a seed, and five transcripts (two in the halo)."""
    nuclei = np.zeros((6, 8), np.uint32)
    nuclei[1:3, 1:3], nuclei[3:5, 5:7] = 4, 9
    seeds = np.zeros((6, 8), np.uint32)
    seeds[5, 0] = 12
    row, col = np.array([1, 3, 0, 5, 4]), np.array([1, 3, 7, 0, 6])
    tx = TileTranscripts(
        x=col + 0.5,
        y=row + 0.5,
        gene=np.array([0, 1, 0, 1, 0], np.int32),
        row=row,
        col=col,
        in_core=np.array([True, True, True, False, False]),
        row_index=np.arange(5),
    )
    tile = Tile(0, 0, 0, core=(0, 4, 0, 8), window=(0, 6, 0, 8))
    image = np.zeros((0, 6, 8), np.uint16)
    return TileData(tile, 1.0, (0.0, 0.0), image, nuclei, tx, ["a", "b"], seeds)


def test_tile_result_from_labels_is_the_pixel_lookup_with_nuclei_and_seeds_on_top():
    data = small_tile_data()
    labels = np.full(data.shape, 7, np.uint32)
    got = TileResult.from_labels(labels).resolve(data)
    want = np.where(data.nuclei > 0, data.nuclei, np.where(data.seeds > 0, data.seeds, 7))
    np.testing.assert_array_equal(got.labels, want)
    np.testing.assert_array_equal(got.cell_id, [4, 7, 7, 12, 9])
    np.testing.assert_array_equal(got.in_nucleus, [True, False, False, False, True])
    # without the override the method's labels stand, and the lookup follows them
    kept = TileResult(labels, nuclei_override=False).resolve(data)
    assert (kept.labels == 7).all() and (kept.cell_id == 7).all()


def test_tile_result_keeps_a_methods_own_transcript_assignment():
    data = small_tile_data()
    labels = np.full(data.shape, 7, np.uint32)
    got = TileResult(labels, cell_id=[0, 4, 9, 0, 7], in_nucleus=[1, 0, 0, 1, 0]).resolve(data)
    np.testing.assert_array_equal(got.cell_id, [0, 4, 9, 0, 7])
    assert got.cell_id.dtype == np.int64 and got.in_nucleus.dtype == bool
    np.testing.assert_array_equal(got.in_nucleus, [True, False, False, True, False])


def test_tile_result_refuses_what_does_not_fit_its_tile():
    """A wrong shape or a per-transcript array of the wrong length names the method."""
    data = small_tile_data()
    labels = np.zeros(data.shape, np.uint32)
    with pytest.raises(RuntimeError, match=r"method m returned shape \(2, 2\)"):
        TileResult.from_labels(np.zeros((2, 2))).resolve(data, "m")
    with pytest.raises(RuntimeError, match="method m: cell_id has shape"):
        TileResult(labels, cell_id=np.zeros(6)).resolve(data, "m")
    with pytest.raises(RuntimeError, match="method m: in_nucleus has shape"):
        TileResult(labels, in_nucleus=np.zeros(4, bool)).resolve(data, "m")
    with pytest.raises(RuntimeError, match="method m: cell_id .* negative"):
        TileResult(labels, cell_id=-np.ones(5)).resolve(data, "m")

"""Tile data: gene strings map onto the chip-wide vocabulary the scan built."""

import numpy as np
import pyarrow as pa
import pytest

from stseg_dist.tiledata import gene_indices


def test_categorical_genes_may_list_genes_no_row_uses():
    """A stored dictionary (pandas categorical, written by a small crop of a larger panel) lists
    genes that occur in no row; the scan's vocabulary holds only those that occur."""
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

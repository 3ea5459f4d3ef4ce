"""transcripts.parquet from the tiles' parts: every row once, in part order, genes as plain text."""

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stseg_dist import constants as K
from stseg_dist.outputs import concat_transcripts


def _part(path, genes: list[str], first_row: int, as_dictionary: bool) -> str:
    gene = pa.array(genes, pa.string())
    table = pa.table(
        {
            K.X: pa.array([float(i) for i in range(len(genes))]),
            K.Y: pa.array([0.5] * len(genes)),
            K.GENE: pc.dictionary_encode(gene) if as_dictionary else gene,
            K.INPUT_ROW: pa.array(range(first_row, first_row + len(genes)), pa.int64()),
            K.CELL_ID: pa.array([1] * len(genes), pa.int64()),
        }
    )
    pq.write_table(table, path)
    return str(path)


def test_parts_with_their_own_dictionaries_concatenate_to_plain_genes(tmp_path):
    """Each part keeps its own gene dictionary (no decode and re-hash); the file reads back with
    the genes as strings, in part order, including a part stored without a dictionary and an
    empty part.
    """
    parts = [
        _part(tmp_path / "a.parquet", ["EPCAM", "CD3E", "EPCAM"], 0, True),
        _part(tmp_path / "b.parquet", [], 3, True),
        _part(tmp_path / "c.parquet", ["PTPRC", "KRT8"], 3, True),
        _part(tmp_path / "d.parquet", ["CD3E"], 5, False),
    ]
    out = tmp_path / "transcripts.parquet"
    assert concat_transcripts(parts, str(out), {}) == 6

    table = pq.read_table(out)
    assert table.schema.field(K.GENE).type == pa.string()
    assert table.column(K.GENE).to_pylist() == ["EPCAM", "CD3E", "EPCAM", "PTPRC", "KRT8", "CD3E"]
    assert table.column(K.INPUT_ROW).to_pylist() == list(range(6))
    frame = pd.read_parquet(out)
    assert not isinstance(frame[K.GENE].dtype, pd.CategoricalDtype)  # what users read: text
    assert frame[K.GENE].tolist() == table.column(K.GENE).to_pylist()
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # one per non-empty part

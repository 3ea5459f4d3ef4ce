"""``stseg synth --from``: a slide tiled from a crop, mirrored copy by copy, references
renumbered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from stseg_dist import constants as K
from stseg_dist.errors import ConfigError, InputError, OutputError
from stseg_dist.synth_from import mirror_index, synth_from
from tests.conftest import make_blob_chip, shared_data


def _mirror(n_out: int, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    return mirror_index(n_out, 0, n_src)


def _pixels(df: pd.DataFrame, ps: float, origin=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    return (
        ((df[K.Y].to_numpy() - origin[1]) / ps).astype(np.int64),
        ((df[K.X].to_numpy() - origin[0]) / ps).astype(np.int64),
    )


def check_tiled(src: str, out: str, ref_columns: dict[str, str]) -> dict:
    """Every invariant of a tiled slide against its source chip; ``ref_columns`` maps each
    integer reference column to the label array it should agree with at its pixel.
    """
    import json

    meta = json.loads(open(f"{out}/chip.json").read())
    smeta = json.loads(open(f"{src}/chip.json").read())
    ps = meta["pixel_size_um"]
    origin = tuple(meta["origin_um"])
    stride = meta["synth_from"]["label_stride"]
    n_rows, n_cols = meta["synth_from"]["copies"]
    img = zarr.open_array(f"{out}/image.zarr")[...]
    if "image" in smeta:  # a converted bundle: the image is the vendor's file, read lazily
        from stseg_dist.io.chip import open_chip

        simg = np.asarray(open_chip(src)._image_array()[...])
    else:
        simg = zarr.open_array(f"{src}/image.zarr")[...]
    H0, W0 = simg.shape[-2:]
    H, W = img.shape[-2:]
    rows, copy_r = _mirror(H, H0)
    cols, copy_c = _mirror(W, W0)
    # the image: each output pixel is its mirrored source pixel; copies meet at every seam
    np.testing.assert_array_equal(img, simg[..., rows[:, None], cols[None, :]])
    for s in range(W0, W, W0):
        np.testing.assert_array_equal(img[..., s - 1], img[..., s])
    for s in range(H0, H, H0):
        np.testing.assert_array_equal(img[..., s - 1, :], img[..., s, :])
    copy = copy_r[:, None] * n_cols + copy_c[None, :]
    labels = {}
    for rel in ("nuclei.zarr", K.TRUTH_CELLS_ZARR, K.TRUTH_NUCLEI_ZARR):
        try:
            slab = zarr.open_array(f"{src}/{rel}")[...].astype(np.int64)
        except (FileNotFoundError, KeyError):
            continue
        lab = zarr.open_array(f"{out}/{rel}")[...].astype(np.int64)
        mirrored = slab[rows[:, None], cols[None, :]]
        np.testing.assert_array_equal(lab, np.where(mirrored > 0, mirrored + copy * stride, 0))
        assert stride > slab.max()
        labels[rel] = lab
    # the transcripts: per full copy exactly the source's; each in the mirror of its pixel
    stx = pd.read_parquet(f"{src}/transcripts.parquet")
    tx = pd.read_parquet(f"{out}/transcripts.parquet")
    r, c = _pixels(tx, ps, origin)
    assert ((r >= 0) & (r < H) & (c >= 0) & (c < W)).all()
    k = (r // H0) * n_cols + c // W0
    sr, sc = _pixels(stx, ps, origin)
    per_copy = np.bincount(k, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
    full_r, full_c = H // H0, W // W0
    assert (per_copy[:full_r, :full_c] == len(stx)).all()
    assert tx[K.TRANSCRIPT_ID].is_unique
    mr = np.where((r // H0) % 2 == 0, r % H0, H0 - 1 - r % H0)
    mc = np.where((c // W0) % 2 == 0, c % W0, W0 - 1 - c % W0)
    back = pd.DataFrame({"r": mr, "c": mc, "gene": tx[K.GENE].astype(str).to_numpy()})
    first = back[k == 0].sort_values(["r", "c", "gene"]).reset_index(drop=True)
    src_px = pd.DataFrame({"r": sr, "c": sc, "gene": stx[K.GENE].astype(str).to_numpy()})
    pd.testing.assert_frame_equal(
        first, src_px.sort_values(["r", "c", "gene"]).reset_index(drop=True)
    )
    # each copy's IDs: the source's shifted by copy * stride (0 stays 0); disjoint across copies
    for col, rel in ref_columns.items():
        ids = tx[col].to_numpy().astype(np.int64)
        assert ((ids == 0) | (ids // stride == k)).all(), col
        src_agree = (
            zarr.open_array(f"{src}/{rel}")[...][sr, sc].astype(np.int64) == stx[col].to_numpy()
        )
        out_agree = labels[rel][r, c] == ids
        # the reference agrees with the array at its pixel exactly as often as in the source
        assert out_agree[k == 0].sum() == src_agree.sum()
        assert out_agree.sum() == src_agree.mean() * len(tx) or full_r * full_c < n_rows * n_cols
    if "vendor_cell_id" in tx:
        vid, svid = tx["vendor_cell_id"].astype(str), stx["vendor_cell_id"].astype(str)
        unassigned = vid.isin(["", "0", "-1", "UNASSIGNED"]).to_numpy()
        assert set(vid[(k == 0) & ~unassigned]) == set(
            svid[~svid.isin(["", "0", "-1", "UNASSIGNED"])]
        )
        tagged = vid[(k > 0) & ~unassigned]
        assert tagged.str.fullmatch(r".+-c\d+").all()
        assert (
            tagged.str.rsplit("-c", n=1).str[1].astype(int).to_numpy() == k[(k > 0) & ~unassigned]
        ).all()
    # spatially sorted like stseg synth: one row group per block, (y, x) order inside each
    pf = pq.ParquetFile(f"{out}/transcripts.parquet")
    for g in range(pf.num_row_groups):
        part = pf.read_row_group(g, columns=[K.X, K.Y]).to_pandas()
        assert pd.MultiIndex.from_frame(part[[K.Y, K.X]]).is_monotonic_increasing
    return meta


@pytest.mark.slow
def test_generated_chip_tiles_with_mirrored_copies(tmp_path):
    from stseg_dist.synth import synth_chip

    src = str(tmp_path / "src")
    synth_chip(src, 60, 40, seed=3, vendor_nuclei=True)
    out = str(tmp_path / "slide")
    info = synth_from(src, out, 150, 100, block_px=64)  # 2.5 x 2.5 copies, blocks across seams
    assert info["copies"] == [3, 3] and info["shape"] == [200, 300]
    meta = check_tiled(src, out, {K.CELL_TRUE: K.TRUTH_CELLS_ZARR})
    assert meta["synthetic"]  # the generator's facts travel with it
    truth = pd.read_parquet(f"{out}/truth/cells.parquet")
    assert truth.cell_id.is_unique and len(truth) > 4 * len(
        pd.read_parquet(f"{src}/truth/cells.parquet")
    )
    from stseg_dist.evaluation.references import load_reference

    assert load_reference(out).transcripts is not None  # scored like a generated chip


@pytest.mark.realdata
def test_xenium_crop_tiles_with_vendor_references(tmp_path):
    """The Xenium crop, its vendor nuclei and per-transcript vendor cells, two by two copies."""
    from stseg_dist.io.bundles import convert_bundle

    bundle = str(shared_data("xenium_breast_top"))
    out = str(tmp_path / "slide")
    info = synth_from(bundle, out, 1020, 300, block_px=1024)  # 2 x 2 copies (191 µm high)
    assert info["copies"] == [2, 2] and info["label_arrays"] == ["nuclei.zarr"]
    assert set(info["renumbered_columns"]) == {"vendor_nucleus_label", "vendor_cell_id"}
    src = str(tmp_path / "src")
    convert_bundle(bundle, src)
    check_tiled(src, out, {"vendor_nucleus_label": K.NUCLEI_ZARR})


def test_bad_input_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "slide"
    with pytest.raises(InputError, match="source not found: .*nowhere"):
        synth_from(str(tmp_path / "nowhere"), str(out), 100, 100)
    chip = tmp_path / "chip"
    make_blob_chip(chip, shape=(40, 60), n_transcripts=500)
    for w, h in ((0, 100), (100, -1), (float("nan"), 10), ("wide", 10)):
        with pytest.raises(ConfigError, match="must be a positive number"):
            synth_from(str(chip), str(out), w, h)
    # a chip whose image was rendered from transcript density has no stain to tile
    import json

    meta = json.loads((chip / "chip.json").read_text())
    (chip / "chip.json").write_text(json.dumps({**meta, "image_source": "transcript_density"}))
    with pytest.raises(InputError, match="has no stain image"):
        synth_from(str(chip), str(out), 100, 100)
    assert not out.exists()
    (chip / "chip.json").write_text(json.dumps(meta))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists"):
        synth_from(str(chip), str(out), 100, 100)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.realdata
def test_bundle_without_image_is_refused(tmp_path):
    bundle = str(shared_data("xenium_lung_preview"))  # transcripts and nuclei, no image
    out = tmp_path / "slide"
    with pytest.raises(InputError, match="has no stain image"):
        synth_from(bundle, str(out), 100, 100)
    assert not out.exists()


def test_cli_synth_from_rejects_generator_flags(tmp_path, capsys):
    from stseg_dist.cli import main

    chip = make_blob_chip(tmp_path / "chip", shape=(40, 60), n_transcripts=500)
    rc = main(
        ["synth", "--from", str(chip), "--width-um", "50", "--height-um", "50"]
        + ["--out", str(tmp_path / "o"), "--membrane"]
    )
    assert rc != 0 and "--membrane only apply to generated chips" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

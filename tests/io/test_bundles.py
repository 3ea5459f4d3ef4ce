"""Bundle readers on the shared real crops and small synthetic bundles."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from stseg_dist.errors import InputError
from stseg_dist.io.bundles import convert_bundle, detect_platform
from stseg_dist.io.chip import open_chip

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
XEN = DATA / "xenium_lung_preview"
GEM = DATA / "stereoseq_gem_mousebrain"
XCSV = DATA / "reader_fixtures" / "xenium_V1_FF_Mouse_Brain" / "sample1"


def need(p):
    if not p.exists():
        pytest.skip(f"shared data {p} absent")


@pytest.mark.realdata
def test_xenium_parquet_counts_filters_and_nuclei_alignment(tmp_path):
    need(XEN)
    assert detect_platform(str(XEN)) == "xenium"
    rep = convert_bundle(str(XEN), str(tmp_path / "c"))
    raw = pq.read_table(XEN / "transcripts.parquet").to_pandas()
    ctrl = raw.feature_name.str.match(r"(NegControl|antisense_|BLANK_|Unassigned|Deprecated)")
    assert rep["dropped"]["control_probe"] == int(ctrl.sum())
    assert rep["dropped"]["low_qv"] == int(((raw.qv < 20) & ~ctrl).sum())
    assert rep["n_transcripts"] == int(((raw.qv >= 20) & ~ctrl).sum())
    chip = open_chip(str(tmp_path / "c"))
    assert chip.pixel_size_um == pytest.approx(0.2125)
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    assert set(t.gene) <= set(raw.feature_name) and len(t) == rep["n_transcripts"]
    assert pq.ParquetFile(tmp_path / "c" / "transcripts.parquet").metadata.num_row_groups >= 1
    # Density image counts every transcript once.
    img = chip.read_image(slice(0, chip.shape_yx[0]), slice(0, chip.shape_yx[1]))
    assert int(img.sum()) == len(t)
    # Vendor nucleus mask under nuclear transcripts carries that transcript's vendor nucleus label.
    nuc = chip.read_nuclei(slice(0, chip.shape_yx[0]), slice(0, chip.shape_yx[1]))
    assert len(np.unique(nuc)) - 1 == rep["n_vendor_nuclei"] == 135
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    sel = (t.overlaps_nucleus == 1) & (t.vendor_nucleus_label > 0)
    hit = nuc[np.asarray(r)[sel], np.asarray(c)[sel]] == t.vendor_nucleus_label[sel].to_numpy()
    assert sel.sum() > 100 and hit.mean() > 0.9


@pytest.mark.realdata
def test_xenium_csv_layout_and_qv_option(tmp_path):
    need(XCSV)
    rep = convert_bundle(str(XCSV), str(tmp_path / "c"), "xenium", options={"min_qv": 0})
    raw = pd.read_csv(XCSV / "transcripts.csv")
    ctrl = raw.feature_name.str.match(r"(NegControl|antisense_|BLANK_|Unassigned|Deprecated)")
    assert rep["dropped"]["low_qv"] == 0 and rep["n_transcripts"] == int((~ctrl).sum())
    assert open_chip(str(tmp_path / "c")).pixel_size_um == pytest.approx(0.2125)


@pytest.mark.realdata
def test_stereoseq_gem_expands_counts(tmp_path):
    need(GEM)
    gem = next(GEM.glob("*.gem.gz"))
    assert detect_platform(str(GEM)) == "stereoseq"
    rep = convert_bundle(str(GEM), str(tmp_path / "c"))
    raw = pd.read_csv(gem, sep="\t", comment="#")
    assert len(raw) == 77634 and rep["n_transcripts"] == int(raw.MIDCounts.sum())
    chip = open_chip(str(tmp_path / "c"))
    assert chip.pixel_size_um == 0.5
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    assert t.x.min() == raw.x.min() * 0.5 and t.y.max() == raw.y.max() * 0.5
    assert t.gene.nunique() == raw.geneID.nunique()


def _xenium_bundle(d: Path, with_image=True):
    d.mkdir()
    rng = np.random.default_rng(0)
    n = 500
    pd.DataFrame(
        {
            "transcript_id": np.arange(n, dtype=np.uint64),
            "cell_id": ["UNASSIGNED"] * n,
            "overlaps_nucleus": np.zeros(n, np.uint8),
            "feature_name": rng.choice(["A", "B", "NegControlProbe_1"], n),
            "x_location": rng.uniform(1, 20, n),
            "y_location": rng.uniform(1, 15, n),
            "z_location": np.zeros(n),
            "qv": rng.uniform(10, 40, n),
        }
    ).to_parquet(d / "transcripts.parquet")
    (d / "experiment.xenium").write_text('{"pixel_size": 0.2125}')
    if with_image:
        img = rng.integers(0, 1000, (80, 100), dtype=np.uint16)
        tifffile.imwrite(d / "morphology_focus.ome.tif", img, ome=True)
    return n


def test_synthetic_xenium_ome_tiff_is_lazy(tmp_path):
    _xenium_bundle(tmp_path / "b")
    rep = convert_bundle(str(tmp_path / "b"), str(tmp_path / "c"))
    assert rep["image_source"] == "vendor_image" and rep["shape_yx"] == [80, 100]
    chip = open_chip(str(tmp_path / "c"))
    assert chip.read_image(slice(0, 80), slice(0, 100)).shape == (80, 100)
    assert np.array_equal(
        chip.read_image(slice(0, 80), slice(0, 100)),
        tifffile.imread(tmp_path / "b" / "morphology_focus.ome.tif"),
    )


def test_image_smaller_than_transcripts_is_rejected(tmp_path):
    _xenium_bundle(tmp_path / "b", with_image=False)
    tifffile.imwrite(
        tmp_path / "b" / "morphology_focus.ome.tif", np.zeros((10, 10), np.uint16), ome=True
    )
    with pytest.raises(InputError, match="outside the image"):
        convert_bundle(str(tmp_path / "b"), str(tmp_path / "c"))
    assert not (tmp_path / "c" / "chip.json").exists()


def test_missing_column_names_file_and_column(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    pd.DataFrame({"feature_name": ["A"], "x_location": [1.0]}).to_parquet(d / "transcripts.parquet")
    with pytest.raises(InputError, match=r"transcripts.parquet.*'y_location'"):
        convert_bundle(str(d), str(tmp_path / "c"))
    assert not (tmp_path / "c" / "chip.json").exists()


def test_unknown_platform_and_empty_bundle(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="cannot detect the platform"):
        convert_bundle(str(tmp_path / "e"), str(tmp_path / "c"))
    with pytest.raises(InputError, match="unknown platform"):
        convert_bundle(str(tmp_path / "e"), str(tmp_path / "c"), "visium")
    d = tmp_path / "b"
    d.mkdir()
    pd.DataFrame(
        {
            "feature_name": pd.Series([], dtype=str),
            "x_location": pd.Series([], dtype=float),
            "y_location": pd.Series([], dtype=float),
        }
    ).to_parquet(d / "transcripts.parquet")
    with pytest.raises(InputError, match="no transcripts"):
        convert_bundle(str(d), str(tmp_path / "c"))


def test_truncated_gem_is_a_clear_error(tmp_path):
    import gzip

    d = tmp_path / "g"
    d.mkdir()
    data = gzip.compress(b"#FileFormat=GEMv0.1\ngeneID\tx\ty\tMIDCount\n" + b"G\t1\t2\t1\n" * 5000)
    (d / "a.gem.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="a.gem.gz"):
        convert_bundle(str(d), str(tmp_path / "c"))


MER = DATA / "merscope_mousebrain"


@pytest.mark.realdata
def test_merscope_mini_dapi_and_vendor_cells_align(tmp_path):
    need(MER)
    import zarr

    assert detect_platform(str(MER)) == "merscope"
    rep = convert_bundle(
        str(MER), str(tmp_path / "c"), options={"image_bounds_um": [6400, 4700, 6900, 5150]}
    )
    raw = pd.read_csv(MER / "vizgen_transcripts.gz")
    assert rep["dropped"]["blank_probe"] == int(raw.gene.str.startswith("Blank-").sum()) == 337
    assert rep["n_transcripts"] == len(raw) - 337 and rep["shape_yx"] == [4143, 4603]
    chip = open_chip(str(tmp_path / "c"))
    assert chip.pixel_size_um == pytest.approx(0.1086, abs=1e-3)
    cells = zarr.open(str(tmp_path / "c" / "vendor_cells.zarr"), mode="r")[:]
    img = chip.read_image(slice(0, 4143), slice(0, 4603))
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    r, c = np.clip(np.asarray(r), 0, 4142), np.clip(np.asarray(c), 0, 4602)
    # Cells (polygons, y un-negated) sit on DAPI and hold far more than their area share of
    # transcripts.
    assert img[cells > 0].mean() > 2 * img[cells == 0].mean()
    assert (cells[r, c] > 0).mean() > 2 * (cells > 0).mean()


def test_merscope_mosaic_tiff_affine_is_lazy(tmp_path):
    d = tmp_path / "m"
    (d / "images").mkdir(parents=True)
    n = 300
    rng = np.random.default_rng(1)
    pd.DataFrame(
        {
            "global_x": rng.uniform(100, 110, n),
            "global_y": rng.uniform(50, 58, n),
            "global_z": np.zeros(n),
            "gene": rng.choice(["A", "Blank-1"], n),
            "transcript_id": ["t"] * n,
            "cell_id": np.arange(n),
        }
    ).to_csv(d / "detected_transcripts.csv")
    img = rng.integers(0, 9, (80, 100), dtype=np.uint16)
    tifffile.imwrite(d / "images" / "mosaic_DAPI_z3.tif", img)
    (d / "images" / "micron_to_mosaic_pixel_transform.csv").write_text(
        "10 0 -1000\n0 10 -500\n0 0 1\n"
    )
    rep = convert_bundle(str(d), str(tmp_path / "c"))
    chip = open_chip(str(tmp_path / "c"))
    assert chip.pixel_size_um == pytest.approx(0.1) and chip.origin_um == pytest.approx(
        (100.0, 50.0)
    )
    assert (
        rep["image_source"] == "vendor_image" and not (tmp_path / "c" / "image.zarr" / "c").exists()
    )
    assert np.array_equal(chip.read_image(slice(0, 80), slice(0, 100)), img)
    (d / "images" / "micron_to_mosaic_pixel_transform.csv").write_text(
        "10 1 -1000\n0 10 -500\n0 0 1\n"
    )
    with pytest.raises(InputError, match="rotation"):
        convert_bundle(str(d), str(tmp_path / "c2"))
    (d / "images" / "micron_to_mosaic_pixel_transform.csv").unlink()
    with pytest.raises(InputError, match="micron_to_mosaic_pixel_transform.csv"):
        convert_bundle(str(d), str(tmp_path / "c3"))


COSMX = DATA / "cosmx_lung12_fov2"


@pytest.mark.realdata
def test_cosmx_fov_stitched_labels_carry_transcript_cell_ids(tmp_path):
    need(COSMX)
    import zarr

    assert detect_platform(str(COSMX)) == "cosmx"
    rep = convert_bundle(
        str(COSMX),
        str(tmp_path / "c"),
        options={"pixel_size_um": 0.18, "image_offset_px": {"x": 4800, "y_top": 3648}},
    )
    raw = pd.read_csv(COSMX / "Lung12_tx_file.csv")
    ctrl = raw.target.str.startswith(("NegPrb", "SystemControl"))
    assert rep["dropped"]["control_probe"] == int(ctrl.sum()) and rep["n_transcripts"] == int(
        (~ctrl).sum()
    )
    assert rep["shape_yx"] == [648, 672]
    chip = open_chip(str(tmp_path / "c"))
    cells = zarr.open(str(tmp_path / "c" / "vendor_cells.zarr"), mode="r")[:]
    assert len(np.unique(cells)) - 1 == 67
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    s = (t.vendor_cell_label > 0).to_numpy()
    hit = cells[np.asarray(r)[s], np.asarray(c)[s]] == t.vendor_cell_label.to_numpy()[s]
    assert s.sum() > 5000 and hit.mean() > 0.95  # the flipped y axis is handled


@pytest.mark.parametrize("name", ["xenium", "merscope", "cosmx", "stereoseq"])
def test_platform_presets_are_valid_configs(name):
    from stseg_dist.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert cfg.nuclei.backend in ("auto", "vendor", "classical")


def test_xenium_features_reach_anndata_var_and_control_probes_are_counted(tmp_path):
    """A bundle's 10x feature list gives var its gene IDs and feature types; the control
    probes the reader drops are counted in uns.
    """
    import gzip

    import anndata as ad

    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline

    _xenium_bundle(tmp_path / "b")
    (tmp_path / "b" / "cell_feature_matrix").mkdir()
    rows = [
        ("ENSG0001", "A", "Gene Expression"),
        ("ENSG0002", "B", "Gene Expression"),
        ("NegControlProbe_1", "NegControlProbe_1", "Negative Control Probe"),
    ]
    with gzip.open(tmp_path / "b" / "cell_feature_matrix" / "features.tsv.gz", "wt") as fh:
        fh.write("".join("\t".join(r) + "\n" for r in rows))
    rep = convert_bundle(str(tmp_path / "b"), str(tmp_path / "c"))
    assert rep["n_features"] == 3 and rep["dropped"]["control_probe"] > 0
    cfg = load_config(overrides=parse_set(["tiling.tile_size_um=40"]), use_env=False)
    run_pipeline(str(tmp_path / "c"), str(tmp_path / "out"), cfg, local=True)
    adata = ad.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert adata.var.loc[["A", "B"], "gene_ids"].tolist() == ["ENSG0001", "ENSG0002"]
    assert (adata.var["feature_types"] == "Gene Expression").all()
    assert "NegControlProbe_1" not in adata.var_names  # dropped, and counted:
    dropped = adata.uns["stseg"]["dropped_at_conversion"]
    assert dropped["control_probe"] == rep["dropped"]["control_probe"]

"""Reader layouts the shared crops do not cover, on small synthetic bundles, plus real MERSCOPE
hdf5 cells.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr

from stseg_dist.errors import InputError
from stseg_dist.io.bundles import convert_bundle, detect_platform
from stseg_dist.io.chip import open_chip
from tests.conftest import shared_data


def xenium_id(prefix: int) -> str:
    """Xenium's cell ID text for a uint32 prefix: 8 hex nibbles written as letters a..p, then -1."""
    return "".join("abcdefghijklmnop"[int(c, 16)] for c in f"{prefix:08x}") + "-1"


def _xenium_with_masks(d: Path, n_cells=6, seed=0):
    """Square cells on a 60x80 px grid, cells.zarr.zip masks and transcripts inside their cell."""
    rng = np.random.default_rng(seed)
    d.mkdir()
    cells = np.zeros((60, 80), np.uint32)
    nuclei = np.zeros((60, 80), np.uint32)
    prefixes = rng.choice(2**31, n_cells, replace=False).astype(np.uint32)
    rows = []
    for i in range(n_cells):
        r0, c0 = 5 + 25 * (i // 3), 3 + 25 * (i % 3)
        cells[r0 : r0 + 20, c0 : c0 + 20] = i + 1
        nuclei[r0 + 6 : r0 + 14, c0 + 6 : c0 + 14] = i + 1
        k = 40
        rows.append(
            pd.DataFrame(
                {
                    "x_location": (c0 + rng.uniform(0.5, 19.5, k)) * 0.2125,
                    "y_location": (r0 + rng.uniform(0.5, 19.5, k)) * 0.2125,
                    "cell_id": xenium_id(int(prefixes[i])),
                    "feature_name": rng.choice(["A", "B"], k),
                    "qv": 30.0,
                }
            )
        )
    df = pd.concat(
        rows
        + [
            pd.DataFrame(
                {
                    "x_location": [1.0],
                    "y_location": [1.0],
                    "cell_id": ["UNASSIGNED"],
                    "feature_name": ["A"],
                    "qv": [30.0],
                }
            )
        ],
        ignore_index=True,
    )
    df["transcript_id"] = np.arange(len(df), dtype=np.uint64)
    df.to_parquet(d / "transcripts.parquet")
    (d / "experiment.xenium").write_text('{"pixel_size": 0.2125}')
    store = zarr.storage.ZipStore(d / "cells.zarr.zip", mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("masks/0", data=nuclei, chunks=(32, 32))
    root.create_array("masks/1", data=cells, chunks=(32, 32))
    root.create_array("cell_id", data=np.stack([prefixes, np.ones(n_cells, np.uint32)], 1))
    store.close()
    return cells, nuclei, df


def test_xenium_cells_zarr_zip_masks_align_with_transcript_cell_ids(tmp_path):
    cells, nuclei, df = _xenium_with_masks(tmp_path / "b")
    rep = convert_bundle(str(tmp_path / "b"), str(tmp_path / "c"))
    assert rep["vendor_segmentation"] == "cells.zarr.zip" and rep["shape_yx"] == [60, 80]
    chip = open_chip(str(tmp_path / "c"))
    assert np.array_equal(chip.read_nuclei(slice(0, 60), slice(0, 80)), nuclei)
    vc = zarr.open(str(tmp_path / "c" / "vendor_cells.zarr"), mode="r")[:]
    assert np.array_equal(vc, cells)
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    assigned = t.vendor_cell_label.to_numpy() > 0
    assert assigned.sum() == len(df) - 1  # every transcript but the UNASSIGNED one
    assert np.array_equal(vc[r, c][assigned], t.vendor_cell_label.to_numpy()[assigned])


def test_xenium_morphology_focus_folder_uses_the_dapi_file(tmp_path):
    d = tmp_path / "b"
    _xenium_with_masks(d)
    (d / "morphology_focus").mkdir()
    rng = np.random.default_rng(3)
    planes = [rng.integers(0, 4000, (60, 80), dtype=np.uint16) for _ in range(3)]
    for i, p in enumerate(planes):
        tifffile.imwrite(d / "morphology_focus" / f"morphology_focus_{i:04d}.ome.tif", p, ome=True)
    rep = convert_bundle(str(d), str(tmp_path / "c"))
    assert rep["image_source"] == "vendor_image"
    chip = open_chip(str(tmp_path / "c"))
    assert chip.image.url.endswith("morphology_focus_0000.ome.tif")
    assert np.array_equal(chip.read_image(slice(0, 60), slice(0, 80)), planes[0])


def test_xenium_masks_off_the_image_grid_are_rejected(tmp_path):
    d = tmp_path / "b"
    _xenium_with_masks(d)
    tifffile.imwrite(d / "morphology_focus.ome.tif", np.zeros((120, 160), np.uint16), ome=True)
    with pytest.raises(
        InputError,
        match=r"cells.zarr.zip: masks are \(60, 80\) px but the image grid is \(120, 160\)",
    ):
        convert_bundle(str(d), str(tmp_path / "c"))
    assert not (tmp_path / "c" / "chip.json").exists()


def write_gef(path: Path, genes, x, y, counts, new_layout=False):
    """A bin1 GEF as the Stereo-seq spec lays it out: expression sorted by gene, gene
    offsets/counts.
    """
    import h5py

    genes = np.asarray(genes)
    order = np.argsort(genes, kind="stable")
    names, n = np.unique(genes[order], return_counts=True)
    exp = np.zeros(len(x), dtype=[("x", "<u4"), ("y", "<u4"), ("count", "u1")])
    exp["x"], exp["y"], exp["count"] = (
        np.asarray(x)[order],
        np.asarray(y)[order],
        np.asarray(counts)[order],
    )
    name_field = [("geneID", "S64"), ("geneName", "S64")] if new_layout else [("gene", "S32")]
    g = np.zeros(len(names), dtype=name_field + [("offset", "<u4"), ("count", "<u4")])
    for f, _ in name_field:
        g[f] = names.astype("S")
    g["offset"], g["count"] = np.r_[0, np.cumsum(n)[:-1]], n
    with h5py.File(path, "w") as f:
        e = f.create_dataset("geneExp/bin1/expression", data=exp)
        f.create_dataset("geneExp/bin1/gene", data=g)
        for k, v in (
            ("minX", exp["x"].min()),
            ("minY", exp["y"].min()),
            ("maxX", exp["x"].max()),
            ("maxY", exp["y"].max()),
        ):
            e.attrs[k] = np.array([v], np.uint32)


@pytest.mark.parametrize("new_layout", [False, True])
def test_gef_counts_genes_and_positions(tmp_path, new_layout):
    rng = np.random.default_rng(0)
    n = 3000
    genes = rng.choice(["Actb", "Gapdh", "Mbp", "Snap25"], n)
    x, y = rng.integers(1000, 1200, n), rng.integers(5000, 5100, n)
    counts = rng.integers(1, 4, n)
    (tmp_path / "g").mkdir()
    write_gef(tmp_path / "g" / "s.gef", genes, x, y, counts, new_layout)
    assert detect_platform(str(tmp_path / "g")) == "stereoseq"
    rep = convert_bundle(str(tmp_path / "g"), str(tmp_path / "c"), options={"batch_rows": 700})
    assert rep["n_records"] == n and rep["n_transcripts"] == counts.sum()
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    want = pd.DataFrame({"x": x * 0.5, "y": y * 0.5, "gene": genes}).loc[
        np.repeat(np.arange(n), counts)
    ]
    key = ["gene", "x", "y"]
    got = t[key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got, want[key].sort_values(key).reset_index(drop=True), check_dtype=False
    )
    assert open_chip(str(tmp_path / "c")).pixel_size_um == 0.5


def test_gef_without_bin1_names_the_dataset(tmp_path):
    import h5py

    (tmp_path / "g").mkdir()
    with h5py.File(tmp_path / "g" / "s.gef", "w") as f:
        f.create_dataset("geneExp/bin50/expression", data=np.zeros(3))
    with pytest.raises(InputError, match="s.gef: not a bin1 GEF.*geneExp/bin1/expression"):
        convert_bundle(str(tmp_path / "g"), str(tmp_path / "c"))


def test_batch_size_does_not_change_the_chip(tmp_path):
    """The transcript table is streamed in batches: 97-row batches give the same chip as one
    batch.
    """
    _xenium_with_masks(tmp_path / "b")
    convert_bundle(str(tmp_path / "b"), str(tmp_path / "one"))
    rep = convert_bundle(str(tmp_path / "b"), str(tmp_path / "many"), options={"batch_rows": 97})
    assert rep["n_transcripts"] == 241
    a = pq.read_table(tmp_path / "one" / "transcripts.parquet")
    b = pq.read_table(tmp_path / "many" / "transcripts.parquet")
    assert a.equals(b)
    for rel in ("nuclei.zarr", "vendor_cells.zarr"):
        assert np.array_equal(
            zarr.open(str(tmp_path / "one" / rel), mode="r")[:],
            zarr.open(str(tmp_path / "many" / rel), mode="r")[:],
        )


def test_merscope_hdf5_cells_hold_their_transcripts(tmp_path):
    """Real feature_data hdf5: transcripts fall in vendor cells far above the cells' area share."""
    src = shared_data("reader_fixtures", "vizgen_HumanOvarianCancerPatient2Slice2")
    assert detect_platform(str(src)) == "merscope"
    rep = convert_bundle(str(src), str(tmp_path / "c"), options={"pixel_size_um": 1.0})
    raw = pd.read_csv(src / "detected_transcripts.csv")
    assert rep["n_transcripts"] == int((~raw.gene.str.startswith("Blank-")).sum())
    assert rep["n_vendor_cells"] > 10 and rep["image_source"] == "transcript_density"
    chip = open_chip(str(tmp_path / "c"))
    cells = zarr.open(str(tmp_path / "c" / "vendor_cells.zarr"), mode="r")[:]
    assert len(np.unique(cells)) - 1 == rep["n_vendor_cells"]
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    inside = (
        cells[np.clip(r, 0, cells.shape[0] - 1), np.clip(c, 0, cells.shape[1] - 1)] > 0
    ).mean()
    assert inside > 0.5 and inside > 1.5 * (cells > 0).mean()


def test_rejected_inputs_name_file_column_and_expectation(tmp_path):
    """Each bad bundle fails with the file (and column) named, and leaves no chip.json behind."""

    def fails(bundle, match, platform="auto", **options):
        with pytest.raises(InputError, match=match):
            convert_bundle(str(bundle), str(tmp_path / "c"), platform, options=options)
        assert not (tmp_path / "c" / "chip.json").exists()

    x = tmp_path / "x"
    x.mkdir()
    (x / "experiment.xenium").write_text('{"pixel_size": 0.2125}')
    fails(x, r"Xenium bundle has none of \('transcripts.parquet'")  # missing required file
    _xenium_with_masks(tmp_path / "t")
    data = (tmp_path / "t" / "transcripts.parquet").read_bytes()
    (tmp_path / "t" / "transcripts.parquet").write_bytes(data[: len(data) // 2])
    fails(tmp_path / "t", r"transcripts.parquet")  # truncated file
    _xenium_with_masks(tmp_path / "i")
    (tmp_path / "i" / "morphology_focus.ome.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    fails(tmp_path / "i", r"morphology_focus.ome.tif: unreadable TIFF")  # corrupt image
    c = tmp_path / "cx"
    c.mkdir()
    pd.DataFrame({"fov": [1], "x_global_px": [1.0], "y_global_px": [2.0], "gene": ["A"]}).to_csv(
        c / "S_tx_file.csv", index=False
    )
    fails(c, r"S_tx_file.csv: missing column 'target'")  # missing column
    fails(c, r"unknown reader option\(s\) 'pixel_size'.*accepted: .*pixel_size_um", pixel_size=0.18)
    fails(c, r"unknown platform 'visium'", platform="visium")
    e = tmp_path / "empty"
    e.mkdir()
    fails(e, "cannot detect the platform")  # empty bundle
    (e / "a.gem").write_text("#FileFormat=GEMv0.1\ngeneID\tx\ty\tMIDCount\n")
    fails(e, "no transcripts left to convert")  # a bundle with no records


def test_generic_table_with_named_columns_and_zarr_or_pyramid_image(tmp_path):
    rng = np.random.default_rng(2)
    n = 400
    (tmp_path / "g").mkdir()
    pd.DataFrame(
        {
            "px": rng.uniform(10, 40, n),
            "py": rng.uniform(5, 25, n),
            "target": rng.choice(["A", "B"], n),
        }
    ).to_csv(tmp_path / "g" / "t.csv", index=False)
    img = rng.integers(0, 999, (64, 96), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "img.zarr"), data=img, chunks=(32, 32))
    opts = {
        "x": "px",
        "y": "py",
        "gene": "target",
        "pixel_size_um": 0.5,
        "image": str(tmp_path / "img.zarr"),
        "origin_um": [8.0, 2.0],
    }
    rep = convert_bundle(str(tmp_path / "g"), str(tmp_path / "c"), "generic", options=opts)
    chip = open_chip(str(tmp_path / "c"))
    assert rep["n_transcripts"] == n and chip.origin_um == (8.0, 2.0) and chip.shape_yx == (64, 96)
    assert np.array_equal(chip.read_image(slice(0, 64), slice(0, 96)), img)
    # An OME-TIFF pyramid read at level 1: half the pixels, twice the pixel size.
    with tifffile.TiffWriter(tmp_path / "p.ome.tif", ome=True) as w:
        w.write(img, subifds=1)
        w.write(img[::2, ::2], subfiletype=1)
    opts.update(image=str(tmp_path / "p.ome.tif"), image_level=1)
    convert_bundle(str(tmp_path / "g"), str(tmp_path / "c1"), "generic", options=opts)
    chip = open_chip(str(tmp_path / "c1"))
    assert chip.pixel_size_um == 1.0 and chip.shape_yx == (32, 48)
    assert np.array_equal(chip.read_image(slice(0, 32), slice(0, 48)), img[::2, ::2])
    with pytest.raises(
        InputError, match=r"t.csv: missing column 'nope' \(has \['px', 'py', 'target'\]\)"
    ):
        convert_bundle(
            str(tmp_path / "g"),
            str(tmp_path / "c2"),
            "generic",
            options={**opts, "x": "nope", "y": "px"},
        )


def test_stereoseq_registered_stain_sets_the_grid(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.gem").write_text(
        "geneID\tx\ty\tMIDCount\nG1\t105\t210\t2\nG2\t130\t240\t1\n"
    )
    stain = np.arange(50 * 40, dtype=np.uint16).reshape(50, 40)
    tifffile.imwrite(tmp_path / "ssdna.tif", stain)
    rep = convert_bundle(
        str(tmp_path / "s"),
        str(tmp_path / "c"),
        options={"image": str(tmp_path / "ssdna.tif"), "image_origin_dnb": [100, 200]},
    )
    chip = open_chip(str(tmp_path / "c"))
    assert rep["image_source"] == "vendor_image" and chip.origin_um == (50.0, 100.0)
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas()
    r, c = chip.um_to_px(t.x.to_numpy(), t.y.to_numpy())
    assert sorted(zip(r.tolist(), c.tolist(), strict=False)) == [(10, 5), (10, 5), (40, 30)]
    with pytest.raises(InputError, match="outside the image"):
        convert_bundle(
            str(tmp_path / "s"),
            str(tmp_path / "c2"),
            options={"image": str(tmp_path / "ssdna.tif"), "image_origin_dnb": [0, 0]},
        )


def test_generic_table_in_pixels_with_vendor_polygons_and_reference_cells(tmp_path):
    """A MERFISH-style table in native pixels (coordinate_um scales it), vendor nucleus and cell
    polygons as Xenium vertex tables, and a per-transcript reference cell column.
    """
    (tmp_path / "m").mkdir()

    def square(cid, x0, y0, s):
        return pd.DataFrame(
            {
                "cell_id": cid,
                "vertex_x": [x0, x0 + s, x0 + s, x0, x0],
                "vertex_y": [y0, y0, y0 + s, y0 + s, y0],
            }
        )

    pd.concat([square(7, 100, 100, 100), square(9, 400, 100, 100)]).to_csv(
        tmp_path / "m" / "nuc.csv", index=False
    )
    pd.concat([square(7, 50, 50, 250), square(9, 350, 50, 250)]).to_csv(
        tmp_path / "m" / "cells.csv", index=False
    )
    pd.DataFrame(
        {
            "x": [150.0, 450.0, 60.0, 700.0],
            "y": [150.0, 150.0, 60.0, 700.0],
            "gene": ["A", "B", "A", "B"],
            "cell": [7, 9, 7, 0],
        }
    ).to_csv(tmp_path / "m" / "tx.csv.gz", index=False)
    opts = {
        "pixel_size_um": 1.0,
        "coordinate_um": 0.1,
        "nuclei": "nuc.csv",
        "cells": "cells.csv",
        "cell_column": "cell",
    }
    rep = convert_bundle(
        str(tmp_path / "m" / "tx.csv.gz"), str(tmp_path / "c"), "generic", options=opts
    )
    assert rep["n_vendor_nuclei"] == 2 and rep["origin_um"] == [6.0, 6.0]
    t = pq.read_table(tmp_path / "c" / "transcripts.parquet").to_pandas().sort_values("x")
    np.testing.assert_allclose(t.x, [6.0, 15.0, 45.0, 70.0])  # µm
    assert t.vendor_cell_label.tolist() == [1, 1, 2, 0]  # reference cells as labels, 0 = none
    nuclei = zarr.open_array(str(tmp_path / "c" / "nuclei.zarr"))[:]
    cells = zarr.open_array(str(tmp_path / "c" / "vendor_cells.zarr"))[:]
    assert (
        set(np.unique(nuclei)) == {0, 1, 2} and (nuclei[4:14, 4:14] == 1).all()
    )  # 10 µm squares at 10 µm
    assert (cells > 0).sum() > (nuclei > 0).sum()
    from stseg_dist.io.bundles import pipeline_hints

    assert pipeline_hints(rep) == {}  # no hint needed: nuclei.backend=auto takes vendor nuclei
    for bad, fragment in (
        (dict(nuclei="missing.csv"), "missing.csv: polygon file not found"),
        (dict(coordinate_um=0), "coordinate_um must be positive"),
        (dict(cell_column="cell_id"), "missing column 'cell_id'"),
    ):
        with pytest.raises(InputError, match=fragment):
            convert_bundle(
                str(tmp_path / "m" / "tx.csv.gz"),
                str(tmp_path / "bad"),
                "generic",
                options={**opts, **bad},
            )
        assert not (tmp_path / "bad" / "chip.json").exists()

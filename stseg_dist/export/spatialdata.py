"""``spatialdata.zarr``: the run as one SpatialData object, written lazily with dask.

Elements, all in the ``global`` coordinate system in µm (the label and image grids through a
scale by the pixel size and a translation to the chip origin):

- ``images/image``: the chip's stain, copied chunk by chunk (never whole in memory);
- ``labels/cell_labels``, ``labels/nucleus_labels``: the run's label arrays, chunk by chunk;
- ``shapes/cell_boundaries``, ``shapes/nucleus_boundaries``: the GeoParquet outlines, indexed
  by ``cell_id``;
- ``points/transcripts``: every transcript with ``gene``, ``cell_id`` and ``in_nucleus``,
  streamed from ``transcripts.parquet`` partition by partition;
- ``tables/table``: ``cells.h5ad`` annotating ``cell_boundaries`` (``region``, ``cell_id``).

Needs the ``spatialdata`` extra (``pip install 'stseg-dist[spatialdata]'``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import constants as K
from ..errors import InputError
from ..io import storage
from ._run import RunFiles

IMAGE = "image"
CELL_LABELS = "cell_labels"
NUCLEUS_LABELS = "nucleus_labels"
CELL_SHAPES = "cell_boundaries"
NUCLEUS_SHAPES = "nucleus_boundaries"
POINTS = "transcripts"
TABLE = "table"
REGION_KEY = "region"
COORDS = "global"  # µm
INSTALL_HINT = "pip install 'stseg-dist[spatialdata]'"


def require_spatialdata():
    import logging
    import warnings

    try:
        with warnings.catch_warnings():
            # xarray-schema (a spatialdata dependency) imports pkg_resources, which warns on import
            warnings.filterwarnings(
                "ignore", message="pkg_resources is deprecated", category=UserWarning
            )
            import spatialdata
    except ImportError as exc:
        raise InputError(
            f"the SpatialData export needs the spatialdata package ({INSTALL_HINT}): {exc}"
        ) from exc
    for name in ("spatialdata", "spatialdata._logging"):  # its INFO notes (e.g. "z ignored in 2D")
        logging.getLogger(name).setLevel(logging.WARNING)
    return spatialdata


def build(files: RunFiles):
    """The run as a SpatialData object whose arrays and points are dask-backed (nothing loaded)."""
    require_spatialdata()
    import anndata as ad
    import dask.array as da
    import geopandas as gpd
    import pandas as pd
    import zarr
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel, PointsModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    ps = files.pixel_size_um
    x0, y0 = files.origin_um
    to_um = {
        COORDS: Sequence([Scale([ps, ps], axes=("y", "x")), Translation([y0, x0], axes=("y", "x"))])
    }
    um = {COORDS: Identity()}

    labels = {}
    for name, key in ((CELL_LABELS, K.LABELS_CELLS), (NUCLEUS_LABELS, K.LABELS_NUCLEI)):
        arr = zarr.open_array(str(files.path(K.LABELS_ZARR) / key), mode="r")
        labels[name] = Labels2DModel.parse(
            da.from_zarr(arr), dims=("y", "x"), transformations=to_um
        )

    img = files.chip._image_array()
    chunks = getattr(img, "chunks", None) or (1024,) * img.ndim
    image = da.from_array(img, chunks=tuple(int(c) for c in chunks))
    if image.ndim == 2:
        image = image[None]
    image = image.rechunk({0: 1})
    images = {
        IMAGE: Image2DModel.parse(
            image,
            dims=("c", "y", "x"),
            c_coords=[f"channel_{i}" for i in range(image.shape[0])],
            transformations=to_um,
        )
    }

    shapes = {}
    for name, fname in (
        (CELL_SHAPES, K.CELL_BOUNDARIES_PARQUET),
        (NUCLEUS_SHAPES, K.NUCLEUS_BOUNDARIES_PARQUET),
    ):
        gdf = gpd.read_parquet(files.path(fname)).set_index(K.CELL_ID)
        gdf.index.name = None
        shapes[name] = ShapesModel.parse(gdf, transformations=um)

    table = ad.read_h5ad(files.path(K.CELLS_H5AD))
    genes = list(table.var_names)
    table.obs[REGION_KEY] = pd.Categorical([CELL_SHAPES] * table.n_obs, categories=[CELL_SHAPES])
    table = TableModel.parse(
        table, region=CELL_SHAPES, region_key=REGION_KEY, instance_key=K.CELL_ID
    )

    points = {
        POINTS: PointsModel.parse(
            transcripts_frame(files.path(K.TRANSCRIPTS_PARQUET), genes),
            coordinates={"x": K.X, "y": K.Y},
            feature_key=K.GENE,
            instance_key=K.CELL_ID,
            transformations=um,
            sort=True,
        )
    }
    return SpatialData(
        images=images, labels=labels, shapes=shapes, points=points, tables={TABLE: table}
    )


def transcripts_frame(url: Path, genes: list[str]):
    """transcripts.parquet as a lazy dask frame: one partition per row group (one per tile as the
    run writes them), indexed by row number with known divisions, genes as known categories.

    Built with ``from_map`` rather than ``read_parquet``: spatialdata then needs no pass over the
    data (index order, categories), writing holds one tile's transcripts at a time, and the index
    is unique across partitions (plotting reindexes on it). dask's parquet reader also fuses
    partitions under column projection and then miscounts them (dask/dask#12411).
    """
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow.parquet as pq

    import pyarrow as pa

    pf = pq.ParquetFile(url)
    names = pf.schema_arrow.names
    groups = [i for i in range(pf.num_row_groups) if pf.metadata.row_group(i).num_rows > 0]
    sizes = [pf.metadata.row_group(i).num_rows for i in groups]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    dtype = pd.CategoricalDtype(genes)

    def read(k: int) -> pd.DataFrame:
        table = pq.ParquetFile(url).read_row_group(groups[k])
        gene = table.column(K.GENE).cast(pa.string()).dictionary_encode().combine_chunks()
        table = table.drop_columns([K.GENE])
        df = table.to_pandas()
        df.index = pd.RangeIndex(int(offsets[k]), int(offsets[k + 1]))
        # genes as codes of the run's vocabulary, without a string pass over every transcript
        codes = dtype.categories.get_indexer(gene.dictionary.to_pandas())[
            gene.indices.to_numpy(zero_copy_only=False)
        ]
        df.insert(names.index(K.GENE), K.GENE, pd.Categorical.from_codes(codes, dtype=dtype))
        return df

    meta = pf.schema_arrow.empty_table().to_pandas()
    meta[K.GENE] = meta[K.GENE].astype(str).astype(dtype)
    if not groups:
        return dd.from_pandas(meta, npartitions=1)
    divisions = (*offsets[:-1].tolist(), int(offsets[-1]) - 1)
    return dd.from_map(
        read, range(len(groups)), meta=meta, divisions=divisions, enforce_metadata=False
    )


def write_spatialdata(files: RunFiles, path: Path) -> None:
    """Write the run's SpatialData object to ``path`` (a new folder)."""
    sdata = build(files)
    sources = {
        CELL_LABELS: files.path(K.LABELS_ZARR) / K.LABELS_CELLS,
        NUCLEUS_LABELS: files.path(K.LABELS_ZARR) / K.LABELS_NUCLEI,
    }
    image = files.chip.image
    if image.format == "zarr" and not storage.is_remote(image.url):
        sources[IMAGE] = Path(image.url)
    write(sdata, Path(path), sources)


def write(sdata, path: Path, sources: dict[str, Path] | None = None) -> None:
    """``sdata.write``, except that rasters go through spatialdata's element writer with flat
    chunk sizes, and a raster whose ``sources`` array (a local zarr array holding the same data)
    is stored exactly as the element would be (same chunks, codecs and chunk keys) has its chunk
    files copied as they are, in parallel, instead of decoded and encoded again: the same array,
    without a pass over its pixels.

    spatialdata 0.7.0 (the only release that installs with the pinned dask 2026.8) hands dask's
    per-block chunk tuples to ome-zarr, which zarr 3 refuses ("Expected an iterable of
    integers"; scverse/spatialdata#1090, fixed in 0.7.1, whose dask cap excludes our pin).
    Giving the chunk shape explicitly is the same write with the chunks it would have used.
    """
    import warnings

    import dask.array as da
    from spatialdata import SpatialData
    from spatialdata._io import write_image, write_labels
    from spatialdata._io.io_zarr import _get_groups_for_element

    with warnings.catch_warnings(), _no_label_value_pass():
        warnings.filterwarnings(
            "ignore", message="zarr v3 autosharding", category=UserWarning
        )  # anndata's notice
        rest = SpatialData(
            shapes=dict(sdata.shapes), points=dict(sdata.points), tables=dict(sdata.tables)
        )
        rest.write(path, consolidate_metadata=False)
        for kind, elements in (("images", sdata.images), ("labels", sdata.labels)):
            for name, element in elements.items():
                chunks = tuple(int(c[0]) for c in element.data.chunks)
                root, _, group = _get_groups_for_element(path, kind, name, use_consolidated=False)
                source = (sources or {}).get(name)
                pixels = element.data
                if source is not None:  # arrays and metadata first, from fill-value chunks
                    # (not stored: zarr skips empty chunks); the pixels after, copied as chunk
                    # files where the layouts agree, else through dask
                    element = element.copy(
                        data=da.zeros(pixels.shape, dtype=pixels.dtype, chunks=pixels.chunks)
                    )
                opts = {"storage_options": {"chunks": chunks}}
                if kind == "images":
                    write_image(element, group, name, **opts)
                else:
                    write_labels(element, root, name, **opts)
                if source is not None:
                    target = _array_path(path / kind / name)
                    if _same_layout(Path(source), target):
                        _copy_chunks(Path(source), target)
                    else:
                        _store_pixels(pixels, target)
        rest.write_consolidated_metadata()


@contextmanager
def _no_label_value_pass():
    """ome-zarr 0.18's ``write_labels`` builds its label classes with every label value
    (``da.unique`` over the whole raster: a full read) to make random colours, then replaces that
    metadata with the ``image-label`` metadata it was given (none here): the pass changes nothing
    written, so it is skipped while we write."""
    try:
        from ome_zarr.classes.image import OMEZarrLabels
    except ImportError:  # another ome-zarr: nothing to skip
        yield
        return
    parse = getattr(OMEZarrLabels, "_parse_image_label_metadata", None)
    if parse is None:
        yield
        return
    OMEZarrLabels._parse_image_label_metadata = lambda self: None
    try:
        yield
    finally:
        OMEZarrLabels._parse_image_label_metadata = parse


def _same_layout(source: Path, target: Path) -> bool:
    """Whether the zarr v3 arrays at ``source`` and ``target`` store the same pixels in the same
    chunk files: equal shape (a 2-D source for a one-channel target), chunks, data type, codecs,
    chunk keys and fill value."""
    import json

    try:
        a = json.loads((source / "zarr.json").read_text())
        b = json.loads((target / "zarr.json").read_text())
    except (OSError, ValueError):
        return False  # e.g. zarr v2 (.zarray): written through dask
    shape, chunk = tuple(a.get("shape", ())), tuple(_chunk_shape(a))
    if len(shape) == len(b.get("shape", ())) - 1 and b["shape"][0] == 1:
        shape, chunk = (1, *shape), (1, *chunk)
    keys = ("data_type", "chunk_key_encoding", "codecs", "fill_value", "zarr_format")
    return (
        a.get("zarr_format") == 3
        and shape == tuple(b.get("shape", ()))
        and chunk == tuple(_chunk_shape(b))
        and all(a.get(k) == b.get(k) for k in keys)
        and not a.get("storage_transformers")
        and not b.get("storage_transformers")
    )


def _chunk_shape(meta: dict) -> list:
    return meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])


def _store_pixels(data, target: Path) -> None:
    """Write a dask array's pixels into the (created, empty) zarr array at ``target``."""
    import dask.array as da
    import zarr

    da.store(data, zarr.open_array(str(target), mode="r+"), lock=False)


def _array_path(element_root: Path) -> Path:
    """The full-resolution array of a raster element written by ome-zarr (its first dataset)."""
    import json

    attrs = json.loads((element_root / "zarr.json").read_text())["attributes"]
    multiscales = attrs.get("ome", attrs).get("multiscales")  # OME-NGFF 0.5 (zarr v3), 0.4
    return element_root / multiscales[0]["datasets"][0]["path"]


def _copy_chunks(source: Path, target: Path) -> None:
    """Copy every stored chunk file of ``source`` into ``target`` (a 2-D source's chunk keys
    under channel 0 of a one-channel target), a few threads at a time."""
    import json
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    src_nd = len(json.loads((Path(source) / "zarr.json").read_text())["shape"])
    dst_nd = len(json.loads((target / "zarr.json").read_text())["shape"])
    prefix = ("0",) * (dst_nd - src_nd)
    root = Path(source) / "c"
    pairs = []
    for dirpath, _, names in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        for name in names:
            pairs.append((Path(dirpath) / name, target.joinpath("c", *prefix, *rel, name)))
    for d in {dst.parent for _, dst in pairs}:
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(lambda p: shutil.copyfile(*p), pairs))


def _shape(element) -> list[int]:
    if hasattr(element, "shape"):
        return list(element.shape)
    return list(
        next(iter(element["scale0"].values())).shape
    )  # multiscale: the full-resolution level


def summary(sdata) -> dict:
    """Element names and sizes (for tests and the CLI)."""
    return {
        "images": {k: _shape(v) for k, v in sdata.images.items()},
        "labels": {k: _shape(v) for k, v in sdata.labels.items()},
        "shapes": {k: len(v) for k, v in sdata.shapes.items()},
        "points": {k: int(np.asarray(len(v))) for k, v in sdata.points.items()},
        "tables": {k: v.n_obs for k, v in sdata.tables.items()},
    }

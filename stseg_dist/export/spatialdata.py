"""``spatialdata.zarr``: the run as one SpatialData object, written lazily with dask.

Elements, all in the ``global`` coordinate system in µm (the label and image grids through a
scale by the pixel size and a translation to the chip origin):

- ``images/image``: the chip's stain;
- ``labels/cell_labels``, ``labels/nucleus_labels``: the run's label arrays (level 0 their
  own chunk files, copied). Images and labels: spatialdata's writer writes their metadata,
  then blocks of whole chunks write every pyramid level of themselves (:func:`write_rasters`,
  ``export/pyramid.py``), in a run as the run's tasks, never whole in memory;
- ``shapes/cell_boundaries``, ``shapes/nucleus_boundaries``: the GeoParquet outlines, indexed
  by ``cell_id``;
- ``points/transcripts``: every transcript with ``gene``, ``cell_id`` and ``in_nucleus``,
  streamed from ``transcripts.parquet`` partition by partition; or, in a run
  (``write_spatialdata(points_parts=...)``), one partition per tile written by the tiles' own
  tasks from the parts the cells pass wrote (:func:`points_part`), while the driver writes the
  rest;
- ``tables/table``: ``cells.h5ad`` annotating ``cell_boundaries`` (``region``, ``cell_id``):
  sopa's convention, the table scanpy and squidpy read;
- ``tables/cell_labels_table``: the same cells annotating ``cell_labels`` (the label values are
  the cell IDs; written as a copy of ``table`` with its region changed), so spatialdata-plot
  can colour the label raster by a column or gene. A table annotates one kind of element
  here: one table over shapes and labels would list each cell twice.

The image carries its channel names in OME ``omero`` metadata (spatialdata from 0.7.3 refuses
an image without them) and, like the labels, a pyramid down to about ``PYRAMID_TOP_PX`` per side.

Needs the ``spatialdata`` extra (``pip install 'stseg-dist[spatialdata]'``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import constants as K
from ..errors import InputError
from ._run import RunFiles
from .pyramid import Raster

IMAGE = "image"
CELL_LABELS = "cell_labels"
NUCLEUS_LABELS = "nucleus_labels"
CELL_SHAPES = "cell_boundaries"
NUCLEUS_SHAPES = "nucleus_boundaries"
POINTS = "transcripts"
TABLE = "table"
LABELS_TABLE = "cell_labels_table"
PYRAMID_TOP_PX = 512
#: sopa's keys for the elements its functions use (``sopa.utils.set_sopa_attrs``), so that
#: ``sopa.aggregate``, ``sopa.io.explorer.write`` etc. find them without being told.
SOPA_ATTRS = {
    "cell_segmentation_image": IMAGE,
    "tissue_segmentation_image": IMAGE,
    "transcripts_dataframe": POINTS,
    "boundaries_shapes": CELL_SHAPES,
}
DEFAULT_CHANNELS = ("DAPI", "membrane")  # the pipeline reads channel 0 as the nuclear stain
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


def build(
    files: RunFiles, points_placeholder: bool = False, rasters: bool = True, others: bool = True
):
    """The run as a SpatialData object whose arrays and points are dask-backed (nothing loaded);
    ``points_placeholder``: the points element without rows (its partitions are written apart);
    ``rasters`` / ``others``: with the images and labels / the shapes, points and tables.
    """
    require_spatialdata()
    import dask.array as da
    import zarr
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, Labels2DModel
    from spatialdata.transformations import Scale, Sequence, Translation

    if not rasters:
        return _others(files, points_placeholder, SpatialData)
    ps = files.pixel_size_um
    x0, y0 = files.origin_um
    to_um = {
        COORDS: Sequence([Scale([ps, ps], axes=("y", "x")), Translation([y0, x0], axes=("y", "x"))])
    }
    labels = {}
    for name, key in ((CELL_LABELS, K.LABELS_CELLS), (NUCLEUS_LABELS, K.LABELS_NUCLEI)):
        arr = zarr.open_array(str(files.path(K.LABELS_ZARR) / key), mode="r")
        labels[name] = Labels2DModel.parse(
            da.from_zarr(arr),
            dims=("y", "x"),
            transformations=to_um,
            scale_factors=scale_factors(arr.shape) or None,
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
            c_coords=channel_names(files.chip.meta.extra, image.shape[0]),
            transformations=to_um,
            scale_factors=scale_factors(image.shape[1:]) or None,
        )
    }

    if not others:
        return SpatialData(images=images, labels=labels)
    rest = _others(files, points_placeholder, SpatialData)
    return SpatialData(
        images=images,
        labels=labels,
        shapes=dict(rest.shapes),
        points=dict(rest.points),
        tables=dict(rest.tables),
        attrs=SOPA_ATTRS,
    )


def _others(files: RunFiles, points_placeholder: bool, SpatialData):  # noqa: N803
    """The run's shapes, points and tables (no rasters) as a SpatialData object."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from spatialdata.models import PointsModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    um = {COORDS: Identity()}
    shapes = {}
    for name, fname in (
        (CELL_SHAPES, K.CELL_BOUNDARIES_PARQUET),
        (NUCLEUS_SHAPES, K.NUCLEUS_BOUNDARIES_PARQUET),
    ):
        read = gpd.read_parquet(files.path(fname)).set_index(K.CELL_ID)
        read.index.name = None
        # µm is the "global" coordinate system's unit and spatialdata keeps no CRS: the same
        # geometries without the file's engineering CRS (assigning None to .crs would override
        # it, which geopandas warns about on every export)
        gdf = gpd.GeoDataFrame(
            read.drop(columns=read.geometry.name),
            geometry=gpd.GeoSeries(np.asarray(read.geometry.values), index=read.index),
        )
        shapes[name] = ShapesModel.parse(gdf, transformations=um)

    cells = ad.read_h5ad(files.path(K.CELLS_H5AD))
    genes = list(cells.var_names)
    tables = {}
    for name, region in ((TABLE, CELL_SHAPES), (LABELS_TABLE, CELL_LABELS)):
        table = cells.copy()
        table.obs[REGION_KEY] = pd.Categorical([region] * table.n_obs, categories=[region])
        tables[name] = TableModel.parse(
            table, region=region, region_key=REGION_KEY, instance_key=K.CELL_ID
        )

    points = {
        POINTS: PointsModel.parse(
            transcripts_frame(files.path(K.TRANSCRIPTS_PARQUET), genes, points_placeholder),
            coordinates={"x": K.X, "y": K.Y},
            feature_key=K.GENE,
            instance_key=K.CELL_ID,
            transformations=um,
            sort=True,
        )
    }
    with warnings_quiet():  # the labels table's region is written with the rasters
        return SpatialData(shapes=shapes, points=points, tables=tables, attrs=SOPA_ATTRS)


def scale_factors(shape_yx) -> list[int]:
    """Halvings until the coarsest level is at most ``PYRAMID_TOP_PX`` per side (none if the
    image is that small already): viewers then open a large chip at its top level.

    None under spatialdata 0.7.0, which cannot write a pyramid with zarr 3 (it passes dask's
    per-block chunks to zarr; fixed in 0.7.1): one level there, as before.
    """
    from importlib.metadata import version

    if tuple(int(v) for v in version("spatialdata").split(".")[:3] if v.isdigit()) < (0, 7, 1):
        return []
    n = max(0, int(np.ceil(np.log2(max(shape_yx) / PYRAMID_TOP_PX))))
    return [2] * n


def channel_names(chip_extra: dict, n: int) -> list[str]:
    """The chip's ``channel_names`` (chip.json) where it has them; else DAPI, membrane, ..."""
    given = chip_extra.get("channel_names")
    if isinstance(given, list) and len(given) == n and len(set(map(str, given))) == n:
        return [str(c) for c in given]
    return [DEFAULT_CHANNELS[i] if i < len(DEFAULT_CHANNELS) else f"channel_{i}" for i in range(n)]


def transcripts_frame(url: Path, genes: list[str], empty: bool = False):
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

    pf = pq.ParquetFile(url)
    groups = [i for i in range(pf.num_row_groups) if pf.metadata.row_group(i).num_rows > 0]
    sizes = [pf.metadata.row_group(i).num_rows for i in groups]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    dtype = pd.CategoricalDtype(genes)

    def read(k: int) -> pd.DataFrame:
        df = pq.ParquetFile(url).read_row_group(groups[k]).to_pandas()
        df.index = pd.RangeIndex(int(offsets[k]), int(offsets[k + 1]))
        df[K.GENE] = df[K.GENE].astype(str).astype(dtype)
        return df

    meta = pf.schema_arrow.empty_table().to_pandas()
    meta[K.GENE] = meta[K.GENE].astype(str).astype(dtype)
    if not groups or empty:
        return dd.from_pandas(meta, npartitions=1)
    divisions = (*offsets[:-1].tolist(), int(offsets[-1]) - 1)
    return dd.from_map(
        read, range(len(groups)), meta=meta, divisions=divisions, enforce_metadata=False
    )


#: dask's name for an unnamed index in the parquet files it writes (read back as no name).
DASK_INDEX = "__null_dask_index__"


def points_part(
    src_url: str, dst: str, start: int, genes: list[str], so: dict | None = None
) -> int:
    """One tile's transcripts (the part the cells pass wrote) as one partition of the store's
    points, as dask's ``to_parquet`` writes a partition of :func:`transcripts_frame`: the same
    columns (dictionaries decoded, as in ``transcripts.parquet``), row numbers from ``start``
    as the index, genes as categories of the chip's vocabulary. Returns the rows written.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..io import storage
    from ..outputs import _plain_schema

    fs, path = storage.fs_and_path(src_url, so)
    with fs.open(path, "rb") as fh:  # one thread: the run's other tasks hold the cores
        table = pq.read_table(fh, use_threads=False)
    table = table.cast(_plain_schema(table.schema))
    codes = pc.index_in(table.column(K.GENE), value_set=pa.array(genes, pa.string()))
    gene = pd.Categorical.from_codes(
        pc.fill_null(codes, -1).to_numpy(), dtype=pd.CategoricalDtype(genes)
    )
    df = table.drop_columns([K.GENE]).to_pandas()
    df.insert(table.column_names.index(K.GENE), K.GENE, gene)
    first = [K.X, K.Y, K.GENE, K.CELL_ID]  # the points element's column order (PointsModel)
    df = df[first + [c for c in df.columns if c not in first]]
    df.index = pd.RangeIndex(int(start), int(start) + len(df), name=DASK_INDEX)
    out = pa.Table.from_pandas(df, preserve_index=True)
    # dictionary pages on the gene only (as transcripts.parquet): the same rows read back, and
    # 7x faster to write than pyarrow's default of trying them on every column
    pq.write_table(out, dst, compression="snappy", use_dictionary=[K.GENE])
    return len(df)


def install_points(store: Path, parts: Path) -> None:
    """Put the partitions :func:`points_part` wrote (``parts``, a folder of ``part.<k>.parquet``)
    in place of the placeholder's in the store's points element.
    """
    import shutil

    target = Path(store) / "points" / POINTS / "points.parquet"
    shutil.rmtree(target)
    Path(parts).rename(target)


def write_spatialdata(files: RunFiles, path: Path, points_parts=None, rasters=None) -> None:
    """Write the run's SpatialData object to ``path`` (a new folder).

    In a run, two parts may come from elsewhere, each a callable that returns, once written:
    ``points_parts``, the folder of the points' partitions (:func:`points_part`, written by the
    run's tasks); ``rasters``, a store holding the images and labels (:func:`write_rasters`,
    written by the run's tasks while the run writes its other outputs). Without ``rasters``, the
    images and labels are written here, block by block in this process.
    """
    import shutil

    path = Path(path)
    rest = _write_others(build(files, points_parts is not None, rasters=False), path)
    if rasters is None:
        write_rasters(files, path, new=False)
    else:
        src = Path(rasters())
        for kind in ("images", "labels"):
            (src / kind).rename(path / kind)
        shutil.rmtree(src)
    with warnings_quiet():
        rest.write_consolidated_metadata()
    if points_parts is not None:
        install_points(path, points_parts())


def write_rasters(files: RunFiles, path: Path, run_blocks=None, new: bool = True) -> None:
    """The run's images and labels, with their pyramids, into the store at ``path`` (a new
    store unless ``new`` is False): spatialdata writes each element's metadata and empty levels
    (:func:`raster_phases`), then blocks of whole chunks write every level of themselves
    (:func:`write_block`): ``run_blocks(jobs)`` runs one phase's blocks (a run hands them to its
    tasks; by default they run here, one after the other); last, the image's channel window.
    """
    import zarr

    if new:
        zarr.open_group(str(path), mode="w")
    for jobs in raster_phases(files, Path(path)):
        if run_blocks is None:
            for job in jobs:
                write_block(job, files.chip)
        else:
            run_blocks(jobs)
    finish_rasters(files, Path(path))


@dataclass(frozen=True)
class RasterBlock:
    """One block of one raster element: levels ``first + 1 .. last`` (and level 0 itself when
    ``first`` is 0) of the block (y0, y1, x0, x1) of level ``first``.
    """

    element: str  # the element's group in the store
    raster: Raster
    first: int
    last: int
    block: tuple[int, int, int, int]
    source: str | None = None  # level 0's array (the run's labels); None: the chip's image
    copy_chunks: bool = False  # level 0's stored chunks are the store's, byte for byte


def raster_phases(files: RunFiles, path: Path) -> list[list[RasterBlock]]:
    """Write the images' and labels' metadata and empty levels into the store at ``path`` with
    spatialdata's own writer (on zero arrays of each level's shape and chunks: zarr stores no
    chunk that is all fill), and return the blocks that fill them, phase by phase (a phase
    reads the last level the one before wrote).
    """
    import zarr

    sdata = build(files, others=False)
    with warnings_quiet():
        _write_rasters(_placeholders(sdata), path, omero=False)
    for kind, elements in (("labels", sdata.labels), ("images", sdata.images)):
        for name, element in elements.items():
            for k, level in enumerate(_levels(element)):
                _set_chunks(
                    Path(path) / kind / name / f"s{k}", [int(c[0]) for c in level.data.chunks]
                )
    sources = {
        CELL_LABELS: str(files.path(K.LABELS_ZARR) / K.LABELS_CELLS),
        NUCLEUS_LABELS: str(files.path(K.LABELS_ZARR) / K.LABELS_NUCLEI),
    }
    phases: list[list[RasterBlock]] = []
    for kind, elements in (("labels", sdata.labels), ("images", sdata.images)):
        for name in elements:
            group = Path(path) / kind / name
            levels = _levels(elements[name])
            arrays = [zarr.open_array(str(group / f"s{k}"), mode="r") for k in range(len(levels))]
            if len(levels) == 1:  # a single scale: the array at the element's root
                arrays = [zarr.open_array(str(group / "s0"), mode="r")]
            raster = Raster.plan(
                "labels" if kind == "labels" else "image",
                [a.shape[-2:] for a in levels],
                [a.data.chunksize[-2:] for a in levels],
                [a.chunks[-2:] for a in arrays],
            )
            source = sources.get(name)
            copy = source is not None and _same_encoding(
                zarr.open_array(source, mode="r"), arrays[0]
            )
            for p, (first, last, side) in enumerate(raster.phases()):
                if len(phases) <= p:
                    phases.append([])
                phases[p] += [
                    RasterBlock(str(group), raster, first, last, b, source, copy)
                    for b in raster.blocks(first, side)
                ]
    return phases


def _placeholders(sdata):
    """``sdata``'s rasters with every level replaced by zeros of the same shape and dtype (the
    metadata spatialdata writes depends on nothing else but the chunks, which
    :func:`_set_chunks` sets afterwards): in chunks of about ``PLACEHOLDER_PX`` per side, so
    that writing them (zarr stores no chunk that is all fill) costs a few dask tasks, not one
    per chunk.
    """
    import dask.array as da
    from spatialdata import SpatialData

    def zeros(arr):
        chunks = tuple(
            c[0] if i < arr.ndim - 2 else min(n, c[0] * max(1, PLACEHOLDER_PX // c[0]))
            for i, (c, n) in enumerate(zip(arr.data.chunks, arr.shape, strict=True))
        )
        return arr.copy(data=da.zeros(arr.shape, dtype=arr.dtype, chunks=chunks))

    def element(el):
        if hasattr(el, "data"):
            return zeros(el)
        tree = el.copy()
        for k in tree.children:
            ds = tree[k].to_dataset()
            name = next(iter(ds.data_vars))
            tree[k] = type(tree)(ds.assign({name: zeros(ds[name])}))  # xarray's DataTree
        return tree

    return SpatialData(
        images={k: element(v) for k, v in sdata.images.items()},
        labels={k: element(v) for k, v in sdata.labels.items()},
    )


#: The side of the placeholder chunks :func:`raster_phases` writes the empty levels in.
PLACEHOLDER_PX = 2048


def _set_chunks(url: Path, chunks: list[int]) -> None:
    """Give an array that stores no chunk yet the chunk shape ``chunks``: its ``zarr.json``
    re-serialised by zarr with only the chunk grid changed (byte for byte what zarr writes for
    an array created with those chunks).
    """
    import dataclasses
    import shutil

    import zarr
    from zarr.core.buffer import default_buffer_prototype

    meta = zarr.open_array(str(url), mode="r").metadata
    grid = {"name": "regular", "configuration": {"chunk_shape": list(chunks)}}
    shutil.rmtree(Path(url) / "c", ignore_errors=True)  # all fill: nothing was to be stored
    body = dataclasses.replace(meta, chunk_grid=grid).to_buffer_dict(default_buffer_prototype())
    (Path(url) / "zarr.json").write_bytes(body["zarr.json"].to_bytes())


def _same_encoding(a, b) -> bool:
    """Whether two zarr arrays store equal chunks as equal bytes (shape, dtype, chunks, codecs,
    fill value and chunk keys alike).
    """
    keys = ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs")
    da_, db = a.metadata.to_dict(), b.metadata.to_dict()
    return all(da_.get(k) == db.get(k) for k in keys)


def write_block(job: RasterBlock, chip) -> dict:
    """Every level of one block (see :class:`RasterBlock`), from that block's pixels alone; the
    chip's image is read only for the image's level 0.
    """
    import zarr

    y0, y1, x0, x1 = job.block
    group = Path(job.element)
    if job.first == 0:
        if job.source is not None:
            data = np.asarray(zarr.open_array(job.source, mode="r")[y0:y1, x0:x1])
        else:
            data = np.asarray(chip._image_array()[..., y0:y1, x0:x1])
            data = data[None] if data.ndim == 2 else data
        if job.copy_chunks:
            _copy_chunks(job, data)
        else:
            _write_level(group, 0, data, y0, x0)
    else:
        data = np.asarray(
            zarr.open_array(str(group / f"s{job.first}"), mode="r")[..., y0:y1, x0:x1]
        )
    for k in range(job.first + 1, job.last + 1):
        data, y0, x0 = job.raster.down(data, k, y0, x0)
        _write_level(group, k, data, y0, x0)
    return {"element": group.name, "block": list(job.block), "first": job.first}


def _write_level(group: Path, level: int, data: np.ndarray, y0: int, x0: int) -> None:
    import zarr

    arr = zarr.open_array(str(group / f"s{level}"), mode="r+")
    h, w = data.shape[-2:]
    arr[..., y0 : y0 + h, x0 : x0 + w] = data


def _copy_chunks(job: RasterBlock, data: np.ndarray) -> None:
    """Level 0 of a label block as the run's own chunk files, copied (same encoding); a chunk
    that is all fill is not stored, as zarr (and so spatialdata) writes none.
    """
    import shutil

    import zarr

    src = zarr.open_array(job.source, mode="r")
    cy, cx = src.chunks
    y0, y1, x0, x1 = job.block
    sep = src.metadata.chunk_key_encoding.separator
    dst = Path(job.element) / "s0"
    for y in range(y0, y1, cy):
        for x in range(x0, x1, cx):
            if not data[y - y0 : y - y0 + cy, x - x0 : x - x0 + cx].any():
                continue
            key = src.metadata.encode_chunk_key((y // cy, x // cx))
            target = dst.joinpath(*key.split(sep)) if sep == "/" else dst / key
            source = (
                Path(job.source).joinpath(*key.split(sep)) if sep == "/" else Path(job.source) / key
            )
            if not source.exists():  # written as fill here: cannot be (checked above); be safe
                _write_level(
                    Path(job.element), 0, data[y - y0 : y - y0 + cy, x - x0 : x - x0 + cx], y, x
                )
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def finish_rasters(files: RunFiles, path: Path) -> None:
    """The image's OME channel metadata (names, colours, a window from the coarsest level as
    written), once its levels are written.
    """
    url = Path(path) / "images" / IMAGE
    channels = channel_names(files.chip.meta.extra, files.chip.n_channels)
    write_omero(url, channels, _written_coarsest(url))


@contextmanager
def warnings_quiet():
    """The writers' notices that say nothing about this store (anndata's zarr v3 sharding; the
    labels table written before the labels it annotates).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
        yield


def _write_others(sdata, path: Path):
    """The shapes, points and tables of ``sdata`` (and its attrs) into a new store at ``path``;
    returns them as the SpatialData object backed there.

    The labels table is the cell table again with another region (:func:`_others`): it is
    written as a copy of the first table's files with the region changed
    (:func:`_copy_table`), the files spatialdata writes for it, at half the cost.
    """
    from spatialdata import SpatialData

    tables = dict(sdata.tables)
    copied = tables.pop(LABELS_TABLE, None) if TABLE in tables else None
    with warnings_quiet():
        rest = SpatialData(
            shapes=dict(sdata.shapes),
            points=dict(sdata.points),
            tables=tables,
            attrs=dict(sdata.attrs),
        )
        rest.write(path, consolidate_metadata=False)
    if copied is not None:
        with warnings_quiet():
            _copy_table(Path(path) / "tables", TABLE, LABELS_TABLE, CELL_LABELS)
    return rest


def _copy_table(tables: Path, name: str, new: str, region: str) -> None:
    """``tables/new``: the table ``tables/name`` annotating ``region`` instead (the only three
    things that differ: its ``region`` column's category, its ``spatialdata_attrs`` region in
    uns and in the group's attributes), each rewritten by anndata's and zarr's own writers.
    """
    import shutil

    import pandas as pd
    import zarr
    from anndata.io import write_elem

    shutil.copytree(tables / name, tables / new)
    group = zarr.open_group(str(tables / new), mode="r+")
    n = group["obs"][REGION_KEY]["codes"].shape[0]
    write_elem(group["obs"], REGION_KEY, pd.Categorical([region] * n, categories=[region]))
    write_elem(group["uns"]["spatialdata_attrs"], "region", region)
    group.attrs.update({"region": region})


def _write_rasters(sdata, path: Path, omero: bool = True) -> None:
    """The images and labels of ``sdata`` into the store at ``path`` through spatialdata's
    element writer, with flat chunk sizes (spatialdata 0.7.0 hands dask's per-block chunk tuples
    to ome-zarr, which zarr 3 refuses: scverse/spatialdata#1090, fixed in 0.7.1);
    ``omero``: also the image's channel metadata (False: :func:`finish_rasters` writes it).
    """
    from spatialdata._io import write_image, write_labels
    from spatialdata._io.io_zarr import _get_groups_for_element

    for kind, elements in (("images", sdata.images), ("labels", sdata.labels)):
        for name, element in elements.items():
            levels = _levels(element)
            chunks = [{"chunks": tuple(int(c[0]) for c in a.data.chunks)} for a in levels]
            options = chunks[0] if len(levels) == 1 else chunks
            root, _, group = _get_groups_for_element(path, kind, name, use_consolidated=False)
            if kind == "images":
                write_image(element, group, name, storage_options=options)
                if not omero:
                    continue
                write_omero(
                    Path(path) / kind / name,
                    levels[0].coords["c"].values.tolist(),
                    _written_coarsest(Path(path) / kind / name),
                )
            else:
                write_labels(element, root, name, storage_options=options)


def _written_coarsest(url: Path):
    """The coarsest level of a raster as written (read back: its dask graph would compute the
    whole pyramid again from the source).
    """
    import dask.array as da
    import zarr

    attrs = zarr.open_group(str(url), mode="r").attrs.asdict()
    ome = attrs.get("ome", attrs)
    last = ome["multiscales"][0]["datasets"][-1]["path"]
    return da.from_zarr(zarr.open_array(str(url / last), mode="r"))


def _levels(element) -> list:
    """The resolution levels of a raster element, finest first (one for a single scale)."""
    if hasattr(element, "data"):
        return [element]
    return [next(iter(element[k].values())) for k in sorted(element.children, key=_level_no)]


def _level_no(key: str) -> int:
    return int(key.removeprefix("scale"))


def write_omero(url: Path, channels: list, coarsest) -> None:
    """OME-NGFF ``omero`` metadata for the image group: one entry per channel with its label,
    a colour and a display window (from ``coarsest``, the coarsest level as a dask array: a
    cheap, whole-image view).

    Written where ome-zarr left none, and completed (colour, window) where it wrote labels only;
    napari, spatialdata-plot and sopa show the channels by these names.
    """
    import dask.array as da
    import zarr

    group = zarr.open_group(str(url), mode="r+")  # fresh: the writer's handle may be stale
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)  # OME-Zarr 0.5 (zarr 3) nests everything under "ome"
    old = {c.get("label"): c for c in (ome.get("omero") or {}).get("channels", [])}
    data = coarsest
    lo = da.nanmin(data, axis=(1, 2)).compute()
    hi = da.nanmax(data, axis=(1, 2)).compute()
    kind = np.dtype(data.dtype)
    limits = np.iinfo(kind) if kind.kind in "ui" else None
    colours = ("0000FF", "00FF00", "FF0000", "FFFF00", "FF00FF", "00FFFF")
    entries = []
    for i, label in enumerate(channels):
        entry = {
            "label": str(label),
            "color": colours[i % len(colours)] if len(channels) > 1 else "FFFFFF",
            "active": True,
            "window": {
                "min": float(limits.min if limits is not None else lo[i]),
                "max": float(limits.max if limits is not None else hi[i]),
                "start": float(lo[i]),
                "end": float(max(hi[i], lo[i] + 1)),
            },
        }
        entry.update(old.get(str(label), {}))
        entries.append(entry)
    ome["omero"] = {"channels": entries, "rdefs": {"model": "color"}}
    group.attrs.update({"ome": ome} if "ome" in attrs else ome)


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

import pytest

from stseg_dist.config import PipelineConfig, env_overrides, load_config, parse_set
from stseg_dist.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("cells:\n  method: expansion\n  expansion:\n    distance_um: 7\n")
    cfg = load_config(
        str(cfg_file),
        parse_set(["tiling.tile_size_um=120", "runtime.progress=false"]),
        use_env=False,
    )
    assert cfg.cells.expansion.distance_um == 7.0
    assert cfg.tiling.tile_size_um == 120.0
    assert cfg.runtime.progress is False
    assert isinstance(PipelineConfig().to_dict()["nuclei"]["classical"], dict)


def test_env_overrides():
    assert env_overrides({"STSEG_RUNTIME__MAX_RETRIES": "5", "OTHER": "1"}) == {
        "runtime": {"max_retries": 5}
    }


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"tiling": {"tile_sz": 3}}, "'tile_sz' in 'tiling'"),
        ({"bogus": 1}, "'bogus' in the top level"),
        ({"tiling": {"tile_size_um": "big"}}, "tiling.tile_size_um' must be a number"),
        ({"runtime": {"max_retries": 1.5}}, "runtime.max_retries' must be an integer"),
        ({"runtime": {"progress": "yes"}}, "runtime.progress' must be true or false"),
        ({"cells": 3}, "'cells' must be a mapping"),
    ],
)
def test_bad_config_rejected(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("'", "'")):
        load_config(overrides=data, use_env=False)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad), use_env=False)
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"), use_env=False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["novalue"])


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("resources.cells.num_gpus=-1", "resources.cells.num_gpus must be >= 0"),
        ("resources.nuclei.actors=-2", "resources.nuclei.actors must be >= 0"),
        ("tiling.chunk_px=0", "tiling.chunk_px must be positive"),
        ("runtime.max_in_flight=0", "runtime.max_in_flight must be at least 1"),
        ("cells.expansion.distance_um=-1", "cells.expansion.distance_um must not be negative"),
        ("nuclei.diameter_um=0", "nuclei.diameter_um must be positive"),
        ("nuclei.channel=-1", "nuclei.channel must be a channel index >= 0"),
        ("cells.cell_diameter_um=-5", "cells.cell_diameter_um must be positive"),
        ("nuclei.classical.sigma_um=-1", "nuclei.classical.sigma_um must not be negative"),
        ("nuclei.classical.min_area_um2=-1", "nuclei.classical.min_area_um2 must not be negative"),
        ("nuclei.classical.min_distance_um=0", "nuclei.classical.min_distance_um must be positive"),
        ("nuclei.classical.footprint_um=0", "nuclei.classical.footprint_um must be positive"),
        ("nuclei.classical.threshold=-1", "nuclei.classical.threshold must not be negative"),
        (
            "nuclei.backend=cellpose nuclei.cellpose.batch_size=0",
            "nuclei.cellpose.batch_size must be at least 1",
        ),
        (
            "nuclei.backend=cellpose nuclei.cellpose.flow_threshold=-0.1",
            "nuclei.cellpose.flow_threshold must not be negative",
        ),
        (
            "nuclei.backend=cellpose nuclei.cellpose.diameter_px=0",
            "nuclei.cellpose.diameter_px must be positive or null",
        ),
        ("nuclei.backend=cellpose nuclei.cellpose.model=''", "nuclei.cellpose.model must name"),
        (
            "cells.method=membrane cells.membrane.backend=cellpose "
            "cells.membrane.cellpose.batch_size=0",
            "cells.membrane.cellpose.batch_size must be at least 1",
        ),
    ],
)
def test_sections_validate_their_values(item, fragment):
    """Each section checks its own values (PipelineConfig.validate, run before any tile)."""
    cfg = load_config(overrides=parse_set(item.split()), use_env=False)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        cfg.validate()


def test_each_method_registers_the_section_the_config_composes():
    """A method's settings are declared beside it (``config_type``) and composed under its name."""
    from stseg_dist.config import CellsConfig
    from stseg_dist.methods import _registry

    cells = CellsConfig()
    for name, classes in _registry().items():
        for cls in classes.values() if isinstance(classes, dict) else [classes]:
            assert cls.config_type is type(getattr(cells, name)), name
            assert cls.config_type.__module__.startswith(f"stseg_dist.methods.{name}")


def test_each_nuclei_backend_registers_the_section_the_config_composes():
    from stseg_dist.config import NucleiConfig
    from stseg_dist.nuclei.cellpose_backend import CellposeNuclei
    from stseg_dist.nuclei.classical import ClassicalNuclei

    nuclei = NucleiConfig()
    for cls in (ClassicalNuclei, CellposeNuclei):
        assert cls.config_type is type(getattr(nuclei, cls.name)), cls.name


@pytest.mark.parametrize("preset", ["xenium", "merscope", "cosmx", "stereoseq"])
def test_presets_load_and_validate(preset):
    from tests.conftest import REPO

    load_config(str(REPO / "configs" / f"{preset}.yaml"), use_env=False).validate()


def test_only_the_selected_method_section_is_validated():
    cfg = load_config(overrides=parse_set(["cells.ucs.tau=0"]), use_env=False)
    cfg.validate()  # expansion runs: the UCS section is not in use
    cfg.cells.method = "ucs"
    with pytest.raises(ConfigError, match=r"cells\.ucs\.tau must be positive"):
        cfg.validate()


@pytest.mark.parametrize("key", ["cells.ucs.num_gpus", "nuclei.cellpose.num_actors"])
def test_moved_compute_keys_name_their_new_home(key):
    with pytest.raises(ConfigError, match=r"resources\.(nuclei|cells)\."):
        load_config(overrides=parse_set([f"{key}=1"]), use_env=False)


@pytest.mark.parametrize(
    "key, value", [("model", "m.pt"), ("storage_options.key", "k"), ("batch_size", 2)]
)
def test_membrane_cellpose_keys_name_their_one_section(key, value):
    """The membrane's Cellpose settings live in the same section type as nuclei.cellpose."""
    with pytest.raises(ConfigError, match=r"cells\.membrane\.cellpose\." + key.split(".")[0]):
        load_config(overrides=parse_set([f"cells.membrane.{key}={value}"]), use_env=False)
    cfg = load_config(
        overrides=parse_set([f"cells.membrane.cellpose.{key}={value}"]), use_env=False
    )
    assert type(cfg.cells.membrane.cellpose) is type(cfg.nuclei.cellpose)


def test_runtime_seed_is_gone():
    """Nothing read it; a config that sets it is told so rather than silently ignored."""
    with pytest.raises(ConfigError, match="'seed' in 'runtime'"):
        load_config(overrides=parse_set(["runtime.seed=3"]), use_env=False)

"""A simulated multi-node cluster: GPU work lands on the GPU node, CPU work spreads, and losing a
node mid-run changes nothing in the outputs."""

import threading
import time

import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from tests.conftest import make_blob_chip
from tests.test_faults import assert_same_outputs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cfg(*items):
    return load_config(overrides=parse_set(["tiling.tile_size_um=24", "tiling.chunk_px=16",
                                            "runtime.progress=false", *items]), use_env=False)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    cpu = c.add_node(num_cpus=2, resources={"cpu_node": 1})
    gpu = c.add_node(num_cpus=1, num_gpus=1, resources={"gpu_node": 1})
    ray.init(address=c.address, logging_level="ERROR")
    c.wait_for_nodes()
    gpu_id = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
    yield c, cpu, gpu, gpu_id
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return make_blob_chip(tmp_path_factory.mktemp("c") / "chip", shape=(300, 360), n_nuclei=70, n_transcripts=20_000)


@pytest.fixture(scope="module")
def clean(chip, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    run_pipeline(chip, str(out), _cfg(), local=True)
    return out


def test_gpu_work_on_gpu_node_cpu_work_spreads(cluster, chip, clean, tmp_path):
    _, _, _, gpu_id = cluster
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg("cells.method=tests.plugin_methods:GpuActorExpansion"))
    placement = summary["placement"]
    assert set(placement["cells"]) == {gpu_id}  # the GPU actor ran every cell tile
    assert len(placement["nuclei"]) >= 2  # CPU tasks spread over several nodes
    assert_same_outputs(clean, tmp_path / "out")


def test_node_removed_mid_run(cluster, chip, clean, tmp_path):
    c, _, _, _ = cluster
    extra = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    removed = []

    def remove_later():
        time.sleep(2.0)
        c.remove_node(extra, allow_graceful=False)
        removed.append(True)

    th = threading.Thread(target=remove_later)
    th.start()
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg("cells.method=tests.plugin_methods:SlowActorExpansion",
                                                             "runtime.max_retries=5"))
    th.join()
    assert removed and summary["status"] == "complete"
    assert_same_outputs(clean, tmp_path / "out")

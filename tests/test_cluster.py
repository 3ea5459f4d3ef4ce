"""A simulated multi-node cluster: GPU work lands on the GPU node, CPU work spreads, and losing a
node mid-run changes nothing in the outputs.
"""

import threading
import time

import pytest

from stseg_dist.driver import run_pipeline
from tests.conftest import assert_same_outputs, small_tiles_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


_cfg = small_tiles_config


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


def test_gpu_work_on_gpu_node_cpu_work_spreads(cluster, medium_chip, clean_run, tmp_path):
    _, _, _, gpu_id = cluster
    summary = run_pipeline(
        medium_chip,
        str(tmp_path / "out"),
        _cfg("cells.method=tests.plugin_methods:GpuActorExpansion"),
    )
    placement = summary["placement"]
    assert set(placement["cells"]) == {gpu_id}  # the GPU actor ran every cell tile
    assert len(placement["nuclei"]) >= 2  # CPU tasks spread over several nodes
    assert_same_outputs(clean_run, tmp_path / "out")


def test_node_removed_mid_run(cluster, medium_chip, clean_run, tmp_path):
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
    summary = run_pipeline(
        medium_chip,
        str(tmp_path / "out"),
        _cfg("cells.method=tests.plugin_methods:SlowActorExpansion", "runtime.max_retries=5"),
    )
    th.join()
    assert removed and summary["status"] == "complete"
    assert_same_outputs(clean_run, tmp_path / "out")

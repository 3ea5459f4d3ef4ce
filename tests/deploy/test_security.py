"""What a security review asks of every overlay: identities, optional keys, token auth, the
NetworkPolicy, the head's placement and the GPU worker's size, checked on the rendered manifests
and on the pods KubeRay builds from them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from .kustomize import render
from .pod_security import kuberay_pods

KR = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
OVERLAYS = sorted(
    p.name for p in (KR / "overlays").iterdir() if (p / "kustomization.yaml").exists()
)
TOKEN_SECRET = {"name": "stseg-ray-token", "key": "auth_token"}
OPERATOR_NAMESPACE = "kuberay-system"  # where docs/cluster.md installs the operator
OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}  # its Helm chart's pod labels


def _docs(overlay):
    return {d["kind"]: d for d in render(KR / "overlays" / overlay)}


def _cluster_spec(doc):
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _ray(docs):
    return docs.get("RayCluster") or docs["RayJob"]


def _ray_containers(doc):
    """(where, container) of every container that talks to Ray: head, workers, the autoscaler
    sidecar (its env comes from autoscalerOptions) and a RayJob's submitter.
    """
    spec = _cluster_spec(doc)
    out = [("autoscaler", spec["autoscalerOptions"])]
    for name, group in [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]:
        out += [(f"{name}/{c['name']}", c) for c in group["template"]["spec"]["containers"]]
    if doc["kind"] == "RayJob":
        out += [("submitter", c) for c in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    return out


def kuberay_labels(doc) -> list[tuple[str, dict]]:
    """(pod, labels) of every Ray pod as KubeRay labels it: the template's labels plus its own."""
    spec = _cluster_spec(doc)
    name = doc["metadata"]["name"] + ("-xxxxx" if doc["kind"] == "RayJob" else "")
    out = []
    for kind, group in [("head", spec["headGroupSpec"])] + [
        ("worker", g) for g in spec["workerGroupSpecs"]
    ]:
        labels = dict((group["template"].get("metadata") or {}).get("labels") or {})
        labels.update(
            {
                "ray.io/is-ray-node": "yes",
                "ray.io/cluster": name,
                "ray.io/node-type": kind,
                "ray.io/group": group.get("groupName", "headgroup"),
                "app.kubernetes.io/name": "kuberay",
                "app.kubernetes.io/created-by": "kuberay-operator",
            }
        )
        out.append((f"{kind}/{group.get('groupName', 'head')}", labels))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_under_the_overlays_service_account(overlay):
    docs = _docs(overlay)
    sa = docs["ServiceAccount"]["metadata"]
    ray = _ray(docs)
    assert sa["namespace"] == ray["metadata"]["namespace"]
    pods = kuberay_pods(ray)
    assert len(pods) >= 3
    for path, pod in pods:
        assert pod.get("serviceAccountName") == sa["name"], f"{overlay} {path}"
        if "headGroupSpec" in path:  # the autoscaler sidecar calls the Kubernetes API
            assert pod.get("automountServiceAccountToken") is not False, path
        else:
            assert pod.get("automountServiceAccountToken") is False, f"{overlay} {path}"
    # a cloud identity is an annotation the overlay adds; none is shipped (placeholders only)
    assert not sa.get("annotations")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_object_store_secret_is_optional_and_the_token_is_not(overlay):
    ray = _ray(_docs(overlay))
    for where, c in _ray_containers(ray):
        for ref in c.get("envFrom", []):
            assert ref["secretRef"]["optional"] is True, f"{overlay} {where}: {ref}"
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, where
        token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == TOKEN_SECRET, f"{overlay} {where}: token auth fails closed without it"
    head = _cluster_spec(ray)["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # reachable, so guarded


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_operator_can_follow_a_rayjob(overlay):
    """KubeRay polls a RayJob's status through the dashboard; with token auth on, it can present
    the token only when authOptions names the Secret the pods read (KubeRay >= 1.6).
    """
    ray = _ray(_docs(overlay))
    assert operator_cannot_follow(ray) == []


def operator_cannot_follow(ray: dict) -> list[str]:
    if ray["kind"] != "RayJob":
        return []
    auth = _cluster_spec(ray).get("authOptions")
    if auth != {"mode": "token", "secretName": TOKEN_SECRET["name"]}:
        return [f"spec.rayClusterSpec.authOptions is {auth!r}: KubeRay cannot read the job status"]
    return []


def test_the_base_rayjob_alone_is_not_followable():
    """The control: the base batch (token in the environment only) fails the check above."""
    job = next(d for d in render(KR / "batch") if d["kind"] == "RayJob")
    assert operator_cannot_follow(job) != []


# ---- NetworkPolicy ---------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
    for e in selector.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        ok &= {
            "In": has and val in e.get("values", []),
            "NotIn": not has or val not in e.get("values", []),
            "Exists": has,
            "DoesNotExist": not has,
        }[e["operator"]]
    return ok


def admits(policy: dict, pod: dict, source: dict, port: int) -> bool:
    """Whether NetworkPolicy ``policy`` lets ``source`` ({namespace, labels}) reach ``pod``
    ({namespace, labels}) on TCP ``port``, by the Kubernetes NetworkPolicy rules.
    """
    ns = policy["metadata"]["namespace"]
    if pod["namespace"] != ns or not _selects(policy["spec"]["podSelector"], pod["labels"]):
        return True  # not selected: this policy does not restrict it
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(
            p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports
        ):
            continue
        peers = rule.get("from")
        if not peers:
            return True  # an empty `from` admits everyone
        for peer in peers:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                nsl = {"kubernetes.io/metadata.name": source["namespace"]}
                ok = _selects(peer["namespaceSelector"], nsl)
            else:
                ok = source["namespace"] == ns
            if ok and _selects(peer.get("podSelector") or {}, source["labels"]):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_guards_the_head_and_lets_the_operator_in(overlay):
    docs = _docs(overlay)
    policy, ray = docs["NetworkPolicy"], _ray(docs)
    ns = ray["metadata"]["namespace"]
    assert policy["metadata"]["namespace"] == ns
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    head = _cluster_spec(ray)["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    operator = {"namespace": OPERATOR_NAMESPACE, "labels": OPERATOR_LABELS}
    neighbour = {"namespace": ns, "labels": {"app": "anything", "job-name": "submitter"}}
    for pod, labels in kuberay_labels(ray):
        target = {"namespace": ns, "labels": labels}
        assert _selects(policy["spec"]["podSelector"], labels), f"{overlay}: {pod} not guarded"
        for port in ports.values():
            assert admits(policy, target, neighbour, port), (pod, port)
            for outsider in (
                {"namespace": "other", "labels": {}},
                {"namespace": "other", "labels": OPERATOR_LABELS},
                {"namespace": OPERATOR_NAMESPACE, "labels": {"app.kubernetes.io/name": "x"}},
            ):
                assert not admits(policy, target, outsider, port), (pod, port, outsider)
            assert admits(policy, target, operator, port) is (port == ports["dashboard"]), (
                pod,
                port,
            )


def test_network_policy_check_catches_an_open_rule():
    """Planted: an ingress rule without `from`, or a pod template without the selected label."""
    docs = _docs("cluster-prod")
    open_ = copy.deepcopy(docs["NetworkPolicy"])
    open_["spec"]["ingress"].append({"ports": [{"port": 8265}]})
    head = {"namespace": "stseg", "labels": dict(kuberay_labels(docs["RayCluster"]))["head/head"]}
    assert admits(open_, head, {"namespace": "other", "labels": {}}, 8265)
    bare = copy.deepcopy(docs["RayCluster"])
    del bare["spec"]["workerGroupSpecs"][1]["template"]["metadata"]
    labels = dict(kuberay_labels(bare))["worker/gpu"]
    assert not _selects(docs["NetworkPolicy"]["spec"]["podSelector"], labels)


# ---- the head on on-demand nodes; the GPU worker's size ------------------------------------------

SPOT_NODES = [
    {"eks.amazonaws.com/capacityType": "SPOT"},
    {"karpenter.sh/capacity-type": "spot"},
    {"cloud.google.com/gke-spot": "true"},
    {"cloud.google.com/gke-preemptible": "true"},
    {"kubernetes.azure.com/scalesetpriority": "spot"},
]
ON_DEMAND_NODES = [
    {},  # kind, minikube, on-premises
    {"eks.amazonaws.com/capacityType": "ON_DEMAND"},
    {"karpenter.sh/capacity-type": "on-demand"},
    {"cloud.google.com/gke-nodepool": "default-pool"},
]


def _schedulable(pod: dict, node: dict) -> bool:
    req = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not req:
        return True
    return any(
        _selects({"matchExpressions": t["matchExpressions"]}, node)
        for t in req["nodeSelectorTerms"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_stays_on_on_demand_nodes(overlay):
    spec = _cluster_spec(_ray(_docs(overlay)))
    head = spec["headGroupSpec"]["template"]["spec"]
    for node in SPOT_NODES:
        assert not _schedulable(head, node), node
    for node in ON_DEMAND_NODES:
        assert _schedulable(head, node), node
    for g in spec["workerGroupSpecs"]:  # workers may use spot capacity: Ray retries their tasks
        assert all(_schedulable(g["template"]["spec"], n) for n in SPOT_NODES), g["groupName"]


def _quantity_gib(q: str) -> float:
    return float(q.removesuffix("Gi")) if q.endswith("Gi") else float(q) / 2**30


@pytest.mark.parametrize("use", ["cluster", "batch"])
def test_dev_gpu_worker_fits_a_small_gpu_node(use):
    """4 vCPU / 15-16 GB nodes with one GPU (g4dn.xlarge, n1-standard-4 + T4) leave about 3.9 CPU
    and 11-14 GiB allocatable; the dev GPU worker must fit, and prod stays the larger one.
    """
    dev, prod = (
        {g["groupName"]: g for g in _cluster_spec(_ray(_docs(f"{use}-{s}")))["workerGroupSpecs"]}[
            "gpu"
        ]["template"]["spec"]["containers"][0]["resources"]
        for s in ("dev", "prod")
    )
    assert dev["limits"] == dev["requests"]
    assert float(dev["requests"]["cpu"]) <= 3.5 and _quantity_gib(dev["requests"]["memory"]) <= 11
    assert dev["requests"]["nvidia.com/gpu"] == 1
    assert _quantity_gib(prod["requests"]["memory"]) > _quantity_gib(dev["requests"]["memory"])

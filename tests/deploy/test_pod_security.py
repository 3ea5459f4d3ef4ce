"""Every pod the manifests make (as KubeRay builds them) meets Pod Security "restricted"."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from .kustomize import render
from .pod_security import kuberay_pods, restricted_violations

KR = Path(__file__).resolve().parents[2] / "deploy" / "kuberay"
OVERLAYS = sorted(
    p.name for p in (KR / "overlays").iterdir() if (p / "kustomization.yaml").exists()
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_restricted(overlay):
    pods = [
        (d["kind"], path, pod)
        for d in render(KR / "overlays" / overlay)
        if d["kind"] in ("RayCluster", "RayJob")
        for path, pod in kuberay_pods(d)
    ]
    assert len(pods) >= 3  # head and two worker groups (+ the submitter for a RayJob)
    for kind, path, pod in pods:
        assert restricted_violations(pod, path) == [], f"{overlay} {kind}"


def test_kuberay_pods_include_what_kuberay_adds():
    job = next(d for d in render(KR / "overlays" / "batch-dev") if d["kind"] == "RayJob")
    pods = dict(kuberay_pods(job))
    assert set(pods) == {
        "spec.submitterPodTemplate.spec",
        "spec.rayClusterSpec.headGroupSpec.template.spec",
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec",
        "spec.rayClusterSpec.workerGroupSpecs[1].template.spec",
    }
    head = pods["spec.rayClusterSpec.headGroupSpec.template.spec"]
    assert [c["name"] for c in head["containers"]] == ["ray-head", "autoscaler"]
    worker = pods["spec.rayClusterSpec.workerGroupSpecs[0].template.spec"]
    assert [c["name"] for c in worker["initContainers"]] == ["wait-gcs-ready"]
    # without autoscalerOptions.securityContext the injected autoscaler sidecar breaks the profile
    bare = copy.deepcopy(job)
    del bare["spec"]["rayClusterSpec"]["autoscalerOptions"]["securityContext"]
    found = restricted_violations(
        dict(kuberay_pods(bare))["spec.rayClusterSpec.headGroupSpec.template.spec"]
    )
    assert (
        "spec.containers[1].securityContext.allowPrivilegeEscalation: must be false [autoscaler]"
        in found
    )
    # without submitterPodTemplate KubeRay's default submitter pod has no securityContext
    del bare["spec"]["submitterPodTemplate"]
    default = dict(kuberay_pods(bare))["spec.submitterPodTemplate(KubeRay default).spec"]
    assert len(restricted_violations(default)) == 4


def _pod(overlay="cluster-prod"):
    rc = next(d for d in render(KR / "overlays" / overlay) if d["kind"] == "RayCluster")
    return dict(kuberay_pods(rc))["spec.workerGroupSpecs[1].template.spec"]


C0 = ("containers", 0)


def _set(path, value):
    def mutate(pod):
        cur = pod
        for p in path[:-1]:
            cur = cur.setdefault(p, {}) if isinstance(p, str) else cur[p]
        cur[path[-1]] = value

    return mutate


def _drop(path):
    def mutate(pod):
        cur = pod
        for p in path[:-1]:
            cur = cur[p]
        del cur[path[-1]]

    return mutate


PLANTED = [
    (
        _set([*C0, "securityContext", "allowPrivilegeEscalation"], True),
        "spec.containers[0].securityContext.allowPrivilegeEscalation: must be false [ray-worker]",
    ),
    (
        _drop([*C0, "securityContext", "allowPrivilegeEscalation"]),
        "spec.containers[0].securityContext.allowPrivilegeEscalation: must be false",
    ),
    (
        _set([*C0, "securityContext", "capabilities"], {"drop": ["NET_RAW"]}),
        "spec.containers[0].securityContext.capabilities.drop: must include ALL",
    ),
    (
        _set([*C0, "securityContext", "capabilities", "add"], ["SYS_ADMIN"]),
        (
            "spec.containers[0].securityContext.capabilities.add: "
            "only NET_BIND_SERVICE allowed, not ['SYS_ADMIN']"
        ),
    ),
    (
        _set([*C0, "securityContext", "privileged"], True),
        "spec.containers[0].securityContext.privileged",
    ),
    (
        _drop(["securityContext", "runAsNonRoot"]),
        "spec.containers[0].securityContext.runAsNonRoot: must be true",
    ),
    (
        _set([*C0, "securityContext", "runAsNonRoot"], False),
        "spec.containers[0].securityContext.runAsNonRoot",
    ),
    (_set(["securityContext", "runAsUser"], 0), "spec.securityContext.runAsUser: must not be 0"),
    (
        _drop(["securityContext", "seccompProfile"]),
        "spec.containers[0].securityContext.seccompProfile.type",
    ),
    (
        _set(["securityContext", "seccompProfile"], {"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type",
    ),
    (_set(["hostNetwork"], True), "spec.hostNetwork: must be unset or false"),
    (_set(["hostPID"], True), "spec.hostPID"),
    (_set(["hostIPC"], True), "spec.hostIPC"),
    (
        _set(["volumes"], [{"name": "h", "hostPath": {"path": "/"}}]),
        "spec.volumes[0]: volume type ['hostPath']",
    ),
    (
        _set(["volumes"], [{"name": "n", "nfs": {"server": "x", "path": "/"}}]),
        "spec.volumes[0]: volume type ['nfs']",
    ),
    (
        _set([*C0, "ports"], [{"containerPort": 80, "hostPort": 80}]),
        "spec.containers[0].ports[0].hostPort",
    ),
    (
        _set(["securityContext", "sysctls"], [{"name": "kernel.msgmax", "value": "1"}]),
        "kernel.msgmax",
    ),
    (
        _set([*C0, "securityContext", "seLinuxOptions"], {"type": "spc_t"}),
        "seLinuxOptions.type: 'spc_t'",
    ),
    (_set([*C0, "securityContext", "procMount"], "Unmasked"), "procMount: must be Default"),
    (
        _set(["initContainers", 0, "securityContext"], {}),
        "spec.initContainers[0].securityContext.allowPrivilege",
    ),
]


@pytest.mark.parametrize("mutate, fragment", PLANTED, ids=[p[1][:60] for p in PLANTED])
def test_planted_violation_is_named(mutate, fragment):
    pod = _pod()
    assert restricted_violations(pod) == []
    mutate(pod)
    found = restricted_violations(pod)
    assert any(fragment in m for m in found), found


def test_allowed_variants_pass():
    pod = _pod()
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    pod["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    pod["volumes"] = [
        {"name": "e", "emptyDir": {}},
        {"name": "c", "configMap": {"name": "x"}},
        {"name": "p", "persistentVolumeClaim": {"claimName": "x"}},
    ]
    assert restricted_violations(pod) == []

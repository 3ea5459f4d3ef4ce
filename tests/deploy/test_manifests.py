"""KubeRay manifests: every overlay renders, is one use (a standing cluster or one batch), and
validates against the official CRDs of the oldest and newest supported KubeRay and Kubernetes' own
Pod schema.

Overlays are rendered with tests/deploy/kustomize.py and, where kubectl is installed, compared with
``kubectl kustomize`` (so the Python renderer cannot drift from kustomize).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stseg_dist.batch import parse_manifest
from stseg_dist.cli import BATCH_EXIT_CODES, EXIT_INCOMPLETE, build_parser, cmd_batch
from stseg_dist.config import env_overrides, load_config

from .k8s_schema import KUBERAY_VERSIONS, pod_templates, problems
from .kustomize import render
from .targets import component_minimum, targets, version
from .test_dockerfiles import parse as parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
KR = ROOT / "deploy" / "kuberay"
OVERLAYS = sorted(
    p.name for p in (KR / "overlays").iterdir() if (p / "kustomization.yaml").exists()
)
SECRETISH = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")
KUBECTL = shutil.which("kubectl")


def kubectl_render(folder: Path) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs):
    return {d["kind"]: d for d in docs}


def cluster_specs(docs):
    for d in docs:
        if d["kind"] == "RayCluster":
            yield d["metadata"]["name"], d["spec"]
        elif d["kind"] == "RayJob":
            yield d["metadata"]["name"], d["spec"]["rayClusterSpec"]


def test_both_kuberay_ends_are_vendored():
    assert KUBERAY_VERSIONS == ["v1.2.2", "v1.7.0"]


@pytest.mark.parametrize("kuberay", KUBERAY_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_official_schemas(overlay, kuberay):
    """Each overlay validates against the CRDs of every KubeRay it targets; an older CRD rejects it
    only for the fields of the components that need a newer KubeRay.
    """
    found = {
        f"{d['kind']}/{d['metadata']['name']}": problems(d, kuberay)
        for d in render(KR / "overlays" / overlay)
    }
    if kuberay in targets(KR / "overlays" / overlay):
        assert all(v == [] for v in found.values()), f"{overlay} on KubeRay {kuberay}: {found}"
    else:
        assert found["RayJob/stseg-batch"] == ["spec.rayClusterSpec.authOptions: unknown field"]


def test_overlay_targets():
    """The standing cluster runs on the whole supported range; a batch needs KubeRay >= 1.6, whose
    operator can present the job API token (components/auth-options).
    """
    for o in OVERLAYS:
        want = KUBERAY_VERSIONS if o.startswith("cluster-") else ["v1.7.0"]
        assert targets(KR / "overlays" / o) == want, o
    for c in (KR / "components").iterdir():
        assert version(component_minimum(c)) >= (1, 2, 0), c.name


# (component, what it patches, versions whose CRD must reject it: the field it adds is newer)
OPTIONAL = [
    ("auth-options", "cluster-prod", ["v1.2.2"]),
    ("gcs-ft", "cluster-prod", ["v1.2.2"]),
    ("gcs-ft-kuberay-1.2", "cluster-prod", []),
    ("private-registry", "batch-prod", ["v1.2.2"]),  # batch-prod itself needs >= 1.6
    ("private-registry", "cluster-prod", []),
]


def _with_component(tmp_path: Path, component: str, overlay: str) -> Path:
    folder = tmp_path / f"{overlay}-{component}"
    folder.mkdir(parents=True)
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(KR / "overlays" / overlay, folder)],
                "components": [os.path.relpath(KR / "components" / component, folder)],
            }
        )
    )
    return folder


@pytest.mark.parametrize(
    "component, overlay, rejecting", OPTIONAL, ids=[f"{c}+{o}" for c, o, _ in OPTIONAL]
)
def test_optional_component_validates_against_the_versions_it_targets(
    tmp_path, component, overlay, rejecting
):
    folder = _with_component(tmp_path, component, overlay)
    want = targets(folder)
    assert want and set(want) | set(rejecting) == set(KUBERAY_VERSIONS)
    for d in render(folder):
        for v in KUBERAY_VERSIONS:
            found = problems(d, v)
            if v in want:
                assert found == [], f"{component} on KubeRay {v}: {found}"
    if not rejecting:
        return
    rc = next(d for d in render(folder) if d["kind"] in ("RayCluster", "RayJob"))
    assert all(problems(rc, v) for v in rejecting), f"{component}: older CRDs should reject it"


def test_gcs_fault_tolerance_components(tmp_path):
    """Both forms name the Redis password Secret and a placeholder address, and touch only a
    standing cluster (a RayJob's lost head is what backoffLimit retries).
    """
    new = by_kind(render(_with_component(tmp_path, "gcs-ft", "cluster-prod")))["RayCluster"]
    ft = new["spec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"].startswith("REDIS_HOST:")
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {
        "name": "stseg-redis",
        "key": "password",
    }
    old = by_kind(render(_with_component(tmp_path, "gcs-ft-kuberay-1.2", "cluster-prod")))[
        "RayCluster"
    ]
    assert old["metadata"]["annotations"]["ray.io/ft-enabled"] == "true"
    head = old["spec"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_REDIS_ADDRESS"]["value"].startswith("REDIS_HOST:")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "stseg-redis"
    assert head["rayStartParams"]["redis-password"] == "$REDIS_PASSWORD"
    assert "gcsFaultToleranceOptions" not in old["spec"], "KubeRay refuses both forms together"
    for c in ("gcs-ft", "gcs-ft-kuberay-1.2"):
        job = by_kind(render(_with_component(tmp_path / "job", c, "batch-prod")))["RayJob"]
        assert job == by_kind(render(KR / "overlays" / "batch-prod"))["RayJob"], c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_is_one_use(overlay):
    """A standing cluster or one batch on its own cluster: never both, never two clusters."""
    kinds = sorted(d["kind"] for d in render(KR / "overlays" / overlay))
    if overlay.startswith("cluster-"):
        assert kinds == ["NetworkPolicy", "RayCluster", "ServiceAccount"], overlay
    elif overlay.startswith("batch-"):
        assert kinds == ["ConfigMap", "NetworkPolicy", "RayJob", "ServiceAccount"], overlay
    else:
        pytest.fail(
            f"overlay {overlay!r}: name it cluster-* (standing cluster) or batch-* (one batch)"
        )


def test_sizes_and_namespaces():
    assert {"cluster-dev", "cluster-prod", "batch-dev", "batch-prod"} <= set(OVERLAYS)
    for use in ("cluster", "batch"):
        dev, prod = (
            next(cluster_specs(render(KR / "overlays" / f"{use}-{s}")))[1] for s in ("dev", "prod")
        )
        assert (
            dev["workerGroupSpecs"][1]["maxReplicas"] < prod["workerGroupSpecs"][1]["maxReplicas"]
        )
        assert (
            dev["workerGroupSpecs"][0]["maxReplicas"] < prod["workerGroupSpecs"][0]["maxReplicas"]
        )
    for o in OVERLAYS:
        ns = {d["metadata"].get("namespace") for d in render(KR / "overlays" / o)}
        assert ns == {"stseg-dev" if o.endswith("-dev") else "stseg"}, o


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_shape(overlay):
    docs = render(KR / "overlays" / overlay)
    for name, spec in cluster_specs(docs):
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", (
            f"{name}: head must be CPU-only"
        )
        head_c = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_c["resources"].get("limits", {})
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        gpu = groups["gpu"]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
        assert (
            gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
        )
        assert gpu["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
        assert (
            "nvidia.com/gpu"
            not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        )
        assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"]  # autoscaled
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            c = g["template"]["spec"]["containers"][0]
            where = f"{name}/{g.get('groupName', 'head')}"
            assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "ray stop", where
            assert {"secretRef": {"name": "stseg-object-store", "optional": True}} in c.get(
                "envFrom", []
            ), where
            for e in c.get("env", []):
                if any(s in e["name"].upper() for s in SECRETISH):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (
                        f"{where}: {e['name']} must come from a Secret, not inline"
                    )
            assert c["resources"]["limits"] == c["resources"]["requests"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_from_one_place(overlay):
    """Every image comes from components/images: registry/name and a version tag or a digest."""
    images = yaml.safe_load((KR / "components" / "images" / "kustomization.yaml").read_text())[
        "images"
    ]
    allowed = {im["newName"] for im in images}
    for d in render(KR / "overlays" / overlay):
        for path, t in pod_templates(d):
            for c in t["spec"]["containers"]:
                image = c["image"]
                name = image.split("@")[0].rsplit(":", 1)[0]
                assert name in allowed, f"{overlay} {path}: {image} not mapped by components/images"
                assert re.search(r"(:\d+\.\d+\.\d+[-\w.]*$)|(@sha256:[0-9a-f]{64}$)", image), (
                    f"{overlay} {path}: {image} needs a version tag or a digest"
                )
        if d["kind"] == "RayJob":
            head = d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][
                0
            ]["image"]
            sub = d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"]
            assert sub == head, "the submitter runs `ray job submit` with the head's Ray and Python"


def test_no_secret_objects_or_inline_credentials():
    for o in OVERLAYS:
        assert all(d["kind"] != "Secret" for d in render(KR / "overlays" / o)), o
    text = "\n".join(p.read_text() for p in KR.rglob("*.yaml"))
    for word in ("AKIA", "aws_secret_access_key:", "AWS_SECRET_ACCESS_KEY, value"):
        assert word not in text


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("batch-")])
def test_rayjob_lifecycle_and_manifest_mount(overlay):
    docs = by_kind(render(KR / "overlays" / overlay))
    s = docs["RayJob"]["spec"]
    assert s["shutdownAfterJobFinishes"] is True
    assert s["ttlSecondsAfterFinished"] > 0 and s["activeDeadlineSeconds"] > 0
    assert s["submitterConfig"]["backoffLimit"] >= 1
    assert s["backoffLimit"] == 1, "one new cluster when the batch itself crashed"
    assert s["submitterPodTemplate"]["spec"]["restartPolicy"] in ("Never", "OnFailure"), (
        "KubeRay copies a given submitter template into a Job as is; "
        "a Job's pods cannot restart Always"
    )
    assert "command" not in s["submitterPodTemplate"]["spec"]["containers"][0], (
        "KubeRay fills in ray job submit"
    )
    assert s["entrypoint"].split()[:4] == ["python", "-m", "stseg_dist", "batch"]
    # the entry point's manifest is mounted on the head from the ConfigMap that the overlay creates
    args = build_parser().parse_args(s["entrypoint"].split()[3:])
    mpath = args.manifest
    head = s["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = head["containers"][0]["volumeMounts"][0]
    assert mpath.startswith(mount["mountPath"] + "/")
    vol = next(v for v in head["volumes"] if v["name"] == mount["name"])
    cm = docs["ConfigMap"]
    assert cm["metadata"]["name"] == vol["configMap"]["name"]
    assert cm["metadata"]["namespace"] == docs["RayJob"]["metadata"]["namespace"]
    text = cm["data"][mpath.rsplit("/", 1)[-1]]
    # its `config` is a preset the image ships (the Dockerfile copies configs/ there)
    image_configs = next(
        a.split()[-1]
        for i, a in parse_dockerfile(ROOT / "deploy" / "Dockerfile")
        if i == "COPY" and a.split()[0] == "configs"
    )
    config = yaml.safe_load(text)["config"]
    assert (
        config.startswith(image_configs + "/") and (ROOT / "configs" / Path(config).name).exists()
    )
    m = parse_manifest(mpath, text=text.replace(image_configs, str(ROOT / "configs")))
    assert len(m.slides) >= 2
    assert "YOUR-BUCKET" in text and "PLACEHOLDERS" in text, "placeholders are named as such"
    # the driver's STSEG_* environment (runtimeEnvYAML) names real config keys with valid values
    env = yaml.safe_load(s["runtimeEnvYAML"])["env_vars"]
    assert env and all(k.startswith("STSEG_") for k in env)
    load_config(overrides=env_overrides(env)).validate()


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("batch-")])
def test_rayjob_retries_only_a_crashed_batch(overlay):
    """KubeRay retries a RayJob (backoffLimit) whenever its Ray job fails, i.e. the entry point
    exits non-zero or the driver is lost. The entry point exits 0 when some slides failed on their
    own data (each recorded), and non-zero when the batch itself crashed or the cluster lost a
    slide.
    """
    s = by_kind(render(KR / "overlays" / overlay))["RayJob"]["spec"]
    assert s["backoffLimit"] == 1
    args = build_parser().parse_args(s["entrypoint"].split()[3:])
    assert args.fn is cmd_batch and args.failed_slides_exit_code == 0
    assert "1  the batch itself crashed" in BATCH_EXIT_CODES  # non-zero: KubeRay retries
    assert build_parser().parse_args(["batch", "m.yaml"]).failed_slides_exit_code == EXIT_INCOMPLETE


def _batch_copy(tmp_path: Path, keep_name_refs: bool) -> Path:
    """deploy/kuberay/batch with the generator's hash suffix switched on (kustomize's default)."""
    dst = tmp_path / "batch"
    shutil.copytree(KR / "batch", dst)
    k = yaml.safe_load((dst / "kustomization.yaml").read_text())
    k["configMapGenerator"][0].pop("options")
    if not keep_name_refs:
        k.pop("configurations")
    (dst / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return dst


@pytest.mark.parametrize("renderer", ["python", "kubectl"])
def test_generated_configmap_name_reaches_the_rayjob(tmp_path, renderer):
    """A hash-suffixed ConfigMap name is rewritten in the RayJob's volume (kustomizeconfig.yaml);
    without that configuration the head would mount a ConfigMap that does not exist.
    """
    if renderer == "kubectl" and not KUBECTL:
        pytest.skip("kubectl not installed")
    run = render if renderer == "python" else kubectl_render
    for keep in (True, False):
        docs = by_kind(run(_batch_copy(tmp_path / str(keep), keep_name_refs=keep)))
        cm_name = docs["ConfigMap"]["metadata"]["name"]
        assert re.fullmatch(r"stseg-batch-manifest-[a-z0-9]{10}", cm_name)
        vol = docs["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
            "volumes"
        ][0]
        assert (vol["configMap"]["name"] == cm_name) is keep


@pytest.mark.parametrize("renderer", ["python", "kubectl"])
def test_an_overlay_can_bring_its_own_batch_manifest(tmp_path, renderer):
    """batch/batch.yaml's advice: an overlay replaces the manifest; the RayJob still mounts it."""
    if renderer == "kubectl" and not KUBECTL:
        pytest.skip("kubectl not installed")
    (tmp_path / "batch.yaml").write_text(
        "out: s3://b/run-2\nslides:\n"
        "  - {name: a, input: s3://b/chips/a, platform: xenium, output: s3://b/out/a}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(KR / "overlays" / "batch-prod", tmp_path)],
                "configMapGenerator": [
                    {"name": "stseg-batch-manifest", "behavior": "replace", "files": ["batch.yaml"]}
                ],
            }
        )
    )
    docs = by_kind((render if renderer == "python" else kubectl_render)(tmp_path))
    head = docs["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert (
        parse_manifest("batch.yaml", text=docs["ConfigMap"]["data"]["batch.yaml"]).slides[0].name
        == "a"
    )
    assert docs["ConfigMap"]["metadata"]["namespace"] == "stseg"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
@pytest.mark.parametrize("target", [f"overlays/{o}" for o in OVERLAYS] + ["private-registry"])
def test_python_render_matches_kubectl_kustomize(target, tmp_path):
    if target == "private-registry":
        folder = tmp_path / "overlays" / "batch-prod-private"
        shutil.copytree(KR, tmp_path, dirs_exist_ok=True)
        shutil.copytree(KR / "overlays" / "batch-prod", folder)
        text = (folder / "kustomization.yaml").read_text()
        (folder / "kustomization.yaml").write_text(
            text.replace(
                "# - ../../components/private-registry", "- ../../components/private-registry"
            )
        )
    else:
        folder = KR / target

    def key(docs):
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    theirs = key(kubectl_render(folder))
    assert theirs == key(render(folder))
    if target == "private-registry":
        job = theirs[("RayJob", "stseg-batch")]
        assert all(
            t["spec"]["imagePullSecrets"] == [{"name": "stseg-registry"}]
            for _, t in pod_templates(job)
        )


def test_private_registry_component_reaches_every_pod_template(tmp_path):
    for use in ("cluster", "batch"):
        folder = tmp_path / use
        folder.mkdir()
        (folder / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(KR / "overlays" / f"{use}-prod", folder)],
                    "components": [os.path.relpath(KR / "components" / "private-registry", folder)],
                }
            )
        )
        for d in render(folder):
            for path, t in pod_templates(d):
                assert t["spec"].get("imagePullSecrets") == [{"name": "stseg-registry"}], path
            for v in targets(folder):
                assert problems(d, v) == []


# ---- planted errors: the checks fail, naming the field ------------------------------------------


def _job(overlay="batch-prod"):
    return by_kind(render(KR / "overlays" / overlay))["RayJob"]


def _cluster(overlay="cluster-prod"):
    return by_kind(render(KR / "overlays" / overlay))["RayCluster"]


WORKER = ["spec", "rayClusterSpec", "workerGroupSpecs", 1]
W1 = "spec.rayClusterSpec.workerGroupSpecs[1]"


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


PLANTED = [
    # (what, mutate(job), expected message fragment, KubeRay versions that must reject it)
    (
        "misspelt spec key",
        lambda j: j["spec"].__setitem__("shutdownAfterJobFinish", True),
        "spec.shutdownAfterJobFinish: unknown field",
        KUBERAY_VERSIONS,
    ),
    (
        "pod-only field in a container securityContext",
        lambda j: _at(
            j, WORKER + ["template", "spec", "containers", 0, "securityContext"]
        ).__setitem__("fsGroup", 1000),
        f"{W1}.template.spec.containers[0].securityContext.fsGroup: unknown field",
        KUBERAY_VERSIONS,
    ),
    (
        "container-only field in a pod securityContext",
        lambda j: _at(j, WORKER + ["template", "spec", "securityContext"]).__setitem__(
            "allowPrivilegeEscalation", False
        ),
        f"{W1}.template.spec.securityContext.allowPrivilegeEscalation: unknown field",
        KUBERAY_VERSIONS,
    ),
    (
        "worker idleTimeoutSeconds (KubeRay >= 1.3 only)",
        lambda j: _at(j, WORKER).__setitem__("idleTimeoutSeconds", 60),
        "spec.rayClusterSpec.workerGroupSpecs[1].idleTimeoutSeconds: unknown field",
        ["v1.2.2"],
    ),
    (
        "worker group suspend (newer KubeRay only)",
        lambda j: _at(j, WORKER).__setitem__("suspend", True),
        "spec.rayClusterSpec.workerGroupSpecs[1].suspend: unknown field",
        ["v1.2.2"],
    ),
    (
        "autoscalerOptions.version (newer KubeRay only)",
        lambda j: j["spec"]["rayClusterSpec"]["autoscalerOptions"].__setitem__("version", "v2"),
        "spec.rayClusterSpec.autoscalerOptions.version: unknown field",
        ["v1.2.2"],
    ),
    (
        "string where an integer goes",
        lambda j: _at(j, WORKER).__setitem__("minReplicas", "0"),
        "spec.rayClusterSpec.workerGroupSpecs[1].minReplicas: '0' is not of type 'integer'",
        KUBERAY_VERSIONS,
    ),
    (
        "int32 overflow",
        lambda j: j["spec"].__setitem__("backoffLimit", 2**31),
        "spec.backoffLimit: 2147483648 is not a 'int32'",
        KUBERAY_VERSIONS,
    ),
    (
        "bad quantity",
        lambda j: _at(
            j, WORKER + ["template", "spec", "containers", 0, "resources", "limits"]
        ).__setitem__("nvidia.com/gpu", "one"),
        f"{W1}.template.spec.containers[0].resources.limits.nvidia.com/gpu",
        KUBERAY_VERSIONS,
    ),
    (
        "duplicate env name",
        lambda j: _at(
            j,
            ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "env"],
        ).append({"name": "RAY_AUTH_MODE", "value": "disabled"}),
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[2]: duplicate entry",
        KUBERAY_VERSIONS,
    ),
    (
        "misspelt submitter field",
        lambda j: j["spec"]["submitterPodTemplate"]["spec"].__setitem__("restartPolicyy", "Never"),
        "spec.submitterPodTemplate.spec.restartPolicyy: unknown field",
        KUBERAY_VERSIONS,
    ),
    (
        "unknown metadata key",
        lambda j: j["metadata"].__setitem__("label", {"a": "b"}),
        "metadata.label: unknown field",
        KUBERAY_VERSIONS,
    ),
    (
        "bad object name",
        lambda j: j["metadata"].__setitem__("name", "Stseg_Batch"),
        "metadata.name: 'Stseg_Batch' is not a DNS-1123 subdomain",
        KUBERAY_VERSIONS,
    ),
    (
        "name too long for KubeRay",
        lambda j: j["metadata"].__setitem__("name", "stseg-batch-" + "x" * 40),
        "metadata.name: 'stseg-batch-xxx",
        KUBERAY_VERSIONS,
    ),
    (
        "minReplicas above maxReplicas",
        lambda j: _at(j, WORKER).update(minReplicas=50, replicas=50),
        f"{W1}: need 0 <= minReplicas (50) <= replicas (50) <= maxReplicas",
        KUBERAY_VERSIONS,
    ),
    (
        "old apiVersion",
        lambda j: j.__setitem__("apiVersion", "ray.io/v1alpha1"),
        "apiVersion: 'ray.io/v1alpha1' is not served",
        KUBERAY_VERSIONS,
    ),
    (
        "a field with CEL rules (managedBy)",
        lambda j: j["spec"].__setitem__("managedBy", "someone"),
        "spec.managedBy",
        KUBERAY_VERSIONS,
    ),
]


@pytest.mark.parametrize("what, mutate, fragment, rejecting", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_error_is_reported_with_its_path(what, mutate, fragment, rejecting):
    job = _job()
    mutate(job)
    for v in KUBERAY_VERSIONS:
        found = problems(job, v)
        if v in rejecting:
            assert any(fragment in m for m in found), (
                f"KubeRay {v}: {what} not reported as {fragment!r}: {found}"
            )
        else:
            assert found == [], f"KubeRay {v} accepts {what}, but: {found}"


def test_planted_error_in_a_file_fails_the_ci_path(tmp_path):
    """The same render + validate path the overlay test uses fails on a broken file on disk."""
    shutil.copytree(KR, tmp_path, dirs_exist_ok=True)
    rc = tmp_path / "cluster" / "raycluster.yaml"
    doc = yaml.safe_load(rc.read_text())
    doc["spec"]["enableInTreeAutoscalling"] = True
    rc.write_text(yaml.safe_dump(doc))
    cluster = by_kind(render(tmp_path / "overlays" / "cluster-dev"))["RayCluster"]
    for v in KUBERAY_VERSIONS:
        assert problems(cluster, v) == ["spec.enableInTreeAutoscalling: unknown field"]


def test_unknown_kinds_are_not_waved_through():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    assert "no schema" in problems(secret, KUBERAY_VERSIONS[0])[0]
    cm = copy.deepcopy(by_kind(render(KR / "overlays" / "batch-dev"))["ConfigMap"])
    cm["data"]["batch.yaml"] = 3
    assert any(m.startswith("data.batch.yaml:") for m in problems(cm, KUBERAY_VERSIONS[0]))


def test_docs_name_the_supported_range_and_real_overlays():
    """README, docs/cluster.md and the manifests' comments name the KubeRay range CI validates and
    only overlays and Dockerfile variants that exist.
    """
    lo, hi = (v.lstrip("v") for v in (KUBERAY_VERSIONS[0], KUBERAY_VERSIONS[-1]))
    texts = {p: p.read_text() for p in (ROOT / "README.md", ROOT / "docs" / "cluster.md")}
    texts.update({p: p.read_text() for p in KR.rglob("*.yaml")})
    for p in (ROOT / "README.md", ROOT / "docs" / "cluster.md"):
        assert f"{lo} to {hi}" in texts[p], (
            f"{p.name}: name the supported KubeRay range {lo} to {hi}"
        )
        assert "kubectl apply -k deploy/kuberay/overlays/cluster-" in texts[p]
        assert "kubectl create -k deploy/kuberay/overlays/batch-" in texts[p]
        assert "kubectl delete -k deploy/kuberay/overlays/batch-" in texts[p], (
            "how to re-run a batch"
        )
    for p, text in texts.items():
        for o in re.findall(r"deploy/kuberay/overlays/([\w-]+)", text):
            assert o in OVERLAYS, f"{p.relative_to(ROOT)} names overlay {o!r}, which does not exist"
        assert "re-apply" not in text.lower(), (
            f"{p.relative_to(ROOT)}: re-applying a RayJob does nothing"
        )
        for variant in re.findall(r"--build-arg VARIANT=(\w+)", text):
            assert variant in ("cpu", "gpu"), f"{p.relative_to(ROOT)}: VARIANT={variant}"

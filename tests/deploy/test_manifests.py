"""KubeRay manifests: base and every overlay render and validate against the schemas in deploy/schemas.

Overlays are rendered in Python (resources + JSON6902 patches, the subset of kustomize they use),
and, where kubectl is installed, compared with ``kubectl kustomize``.
"""
import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from stseg_dist.batch import parse_manifest

ROOT = Path(__file__).resolve().parents[2]
KR = ROOT / "deploy" / "kuberay"
SCHEMAS = ROOT / "deploy" / "schemas"
OVERLAYS = sorted(p.name for p in (KR / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SCHEMA_FOR = {("ray.io/v1", "RayCluster"): "raycluster-ray.io-v1.json",
              ("ray.io/v1", "RayJob"): "rayjob-ray.io-v1.json",
              ("v1", "ConfigMap"): "configmap-v1.json"}
SECRETISH = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


def _ptr(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _ptr(op["path"])
        cur = doc
        for p in parents:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        key = int(last) if isinstance(cur, list) and last != "-" else last
        if op["op"] == "replace":
            if isinstance(cur, list):
                cur[key]  # IndexError: the path must exist
            elif key not in cur:
                raise KeyError(f"replace: {op['path']} does not exist")
            cur[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(cur, list):
                cur.insert(len(cur) if key == "-" else key, op["value"])
            else:
                cur[key] = op["value"]
        elif op["op"] == "remove":
            del cur[key]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


def render(folder: Path) -> list[dict]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for res in k.get("resources", []):
        p = folder / res
        docs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    for patch in k.get("patches", []):
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        assert hits, f"{folder}: patch target {t} matches nothing"
        for d in hits:
            docs[docs.index(d)] = json_patch(d, yaml.safe_load(patch["patch"]))
    for d in docs:
        if "namespace" in k:
            d["metadata"]["namespace"] = k["namespace"]
        for lab in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(lab["pairs"])
    return docs


def validate(doc: dict) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_FOR, f"no schema for {key}: every kind we ship must be validated"
    schema = json.loads((SCHEMAS / SCHEMA_FOR[key]).read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def _containers(spec):
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [(g.get("groupName", "head"), g, c) for g in groups for c in g["template"]["spec"]["containers"]]


def _cluster_specs(docs):
    for d in docs:
        if d["kind"] == "RayCluster":
            yield d["metadata"]["name"], d["spec"]
        elif d["kind"] == "RayJob":
            yield d["metadata"]["name"], d["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("target", ["base", *[f"overlays/{o}" for o in OVERLAYS]])
def test_manifests_validate(target):
    docs = render(KR / target)
    assert {d["kind"] for d in docs} == {"RayCluster", "RayJob", "ConfigMap"}
    for d in docs:
        validate(d)


def test_overlays_exist_and_change_sizes():
    assert {"dev", "prod"} <= set(OVERLAYS)
    dev, prod = ({d["kind"]: d for d in render(KR / "overlays" / o)} for o in ("dev", "prod"))
    assert dev["RayCluster"]["spec"]["workerGroupSpecs"][1]["maxReplicas"] < \
        prod["RayCluster"]["spec"]["workerGroupSpecs"][1]["maxReplicas"]
    assert dev["RayJob"]["metadata"]["namespace"] == "stseg-dev"


@pytest.mark.parametrize("target", ["base", *[f"overlays/{o}" for o in OVERLAYS]])
def test_cluster_shape(target):
    docs = render(KR / target)
    for name, spec in _cluster_specs(docs):
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{name}: head must be CPU-only"
        head_c = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_c["resources"].get("limits", {})
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        gpu = groups["gpu"]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
        assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"]  # autoscaled
        for group, g, c in _containers(spec):
            assert c["lifecycle"]["preStop"]["exec"]["command"][-1] == "ray stop", (name, group)
            assert g["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
            assert {"secretRef": {"name": "stseg-object-store"}} in c.get("envFrom", []), (name, group)
            for e in c.get("env", []):
                if any(s in e["name"].upper() for s in SECRETISH):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                        f"{name}/{group}: {e['name']} must come from a Secret, not inline"
            assert c["resources"]["limits"] == c["resources"]["requests"], (name, group)


def test_no_secret_objects_or_inline_credentials():
    text = "\n".join(p.read_text() for p in KR.rglob("*.yaml"))
    assert "kind: Secret" not in text
    for word in ("AKIA", "aws_secret_access_key:", "AWS_SECRET_ACCESS_KEY, value"):
        assert word not in text


def test_rayjob_lifecycle():
    job = next(d for d in render(KR / "base") if d["kind"] == "RayJob")
    s = job["spec"]
    assert s["shutdownAfterJobFinishes"] is True
    assert s["ttlSecondsAfterFinished"] > 0 and s["activeDeadlineSeconds"] > 0
    assert s["submitterConfig"]["backoffLimit"] >= 1
    assert s["entrypoint"].split()[:4] == ["python", "-m", "stseg_dist", "batch"]
    # the entry point's manifest is mounted on the head from the ConfigMap, and is a valid batch manifest
    mpath = s["entrypoint"].split()[-1]
    head = s["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = head["containers"][0]["volumeMounts"][0]
    assert mpath.startswith(mount["mountPath"] + "/")
    vol = next(v for v in head["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in render(KR / "base") if d["kind"] == "ConfigMap")
    assert cm["metadata"]["name"] == vol["configMap"]["name"]
    text = cm["data"][mpath.rsplit("/", 1)[-1]]
    m = parse_manifest(mpath, text=text)
    assert len(m.slides) >= 2


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["spec"].__setitem__("enableInTreeAutoscalling", True), "enableInTreeAutoscalling"),
    (lambda d: d["spec"]["workerGroupSpecs"][1].__setitem__("minReplicas", -1), "-1"),
    (lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .__setitem__("nvidia.com/gpu", "one"), "one"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("image"), "image"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["lifecycle"]
     .__setitem__("preStop", {"exec": {"cmd": ["ray", "stop"]}}), "cmd"),
    (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0), "0"),
    (lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "ray.io/v1alpha1"),
    (lambda d: d["spec"].__setitem__("rayVersion", "latest"), "latest"),
])
def test_broken_manifest_fails(mutate, fragment):
    doc = next(d for d in render(KR / "base") if d["kind"] == "RayCluster")
    validate(doc)
    mutate(doc)
    schema = json.loads((SCHEMAS / SCHEMA_FOR[("ray.io/v1", "RayCluster")]).read_text())
    with pytest.raises(jsonschema.ValidationError) as ei:
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    assert fragment in str(ei.value)


def test_broken_rayjob_fails(tmp_path):
    job = next(d for d in render(KR / "base") if d["kind"] == "RayJob")
    job["spec"]["ttlSecondsAfterFinished"] = "600"
    with pytest.raises(jsonschema.ValidationError):
        validate(job)
    # and a broken file on disk fails the same render + validate path the CI test uses
    (tmp_path / "kustomization.yaml").write_text("resources: [rayjob.yaml]\n")
    bad = yaml.safe_load((KR / "base" / "rayjob.yaml").read_text())
    bad["spec"]["submissionMode"] = "K8sMode"
    (tmp_path / "rayjob.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(jsonschema.ValidationError, match="K8sMode"):
        for d in render(tmp_path):
            validate(d)


def test_schemas_match_generator():
    import runpy

    gen = runpy.run_path(str(SCHEMAS / "make_schemas.py"))
    for name, schema in gen["SCHEMAS"].items():
        assert json.loads((SCHEMAS / name).read_text()) == schema, f"{name} is stale: run make_schemas.py"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_render_matches_kubectl_kustomize(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(KR / "overlays" / overlay)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in render(KR / "overlays" / overlay)}
    assert theirs == ours
    for d in theirs.values():
        validate(d)

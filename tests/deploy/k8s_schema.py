"""Check rendered manifests against the vendored official schemas, strictly, as the API server does.

The KubeRay CRD schemas (deploy/schemas/kuberay-*) and Kubernetes' core/v1 schema
(deploy/schemas/k8s-*) are vendored as published. Strictness is added here, following the API
server's rules: a CRD's schema is structural, so a key not declared under ``properties`` is an
unknown field (``kubectl apply`` fails with field validation ``Strict``, the default since
Kubernetes 1.27) unless the node says ``x-kubernetes-preserve-unknown-fields``; the object's own
``metadata`` is checked against Kubernetes' ObjectMeta. Every pod template inside a
RayCluster/RayJob is also checked against Kubernetes' own PodTemplateSpec.
``x-kubernetes-list-type`` (duplicate keys) and ``format: int32`` are enforced; a CEL rule
(``x-kubernetes-validations``) is not evaluated, so a manifest that sets such a field is reported.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker, ValidationError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "schemas"
KUBERAY_VERSIONS = sorted(
    (p.name.removeprefix("kuberay-") for p in SCHEMAS.glob("kuberay-v*")),
    key=lambda v: tuple(int(x) for x in v.lstrip("v").split(".")),
)
K8S_DIR = next(SCHEMAS.glob("k8s-v*"))
CRD_FILES = {"RayCluster": "raycluster.json", "RayJob": "rayjob.json"}
POD_TEMPLATE = "io.k8s.api.core.v1.PodTemplateSpec"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
BUILTIN = {
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "ServiceAccount"): "io.k8s.api.core.v1.ServiceAccount",
    ("networking.k8s.io/v1", "NetworkPolicy"): "io.k8s.api.networking.v1.NetworkPolicy",
}
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# KubeRay 1.7.0 utils/validation.go (names end up in Service and pod names); 1.2.2 checks less
MAX_NAME = {"RayCluster": 53, "RayJob": 53 - 6}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames")


def _is_object(node: dict) -> bool:
    t = node.get("type")
    return t == "object" or (isinstance(t, list) and "object" in t)


def strict(node, structural: bool, _root: bool = True):
    """Copy of a schema where undeclared keys are errors (``additionalProperties: false``).

    ``structural``: CRD semantics, where an object schema with neither ``properties`` nor
    ``additionalProperties`` keeps no fields at all; Kubernetes' own schemas leave such objects
    open.
    """
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _MAPS and isinstance(v, dict):
            out[k] = {n: strict(s, structural, _root=False) for n, s in v.items()}
        elif k in _LISTS and isinstance(v, list):
            out[k] = [strict(s, structural, _root=False) for s in v]
        elif k in _ONE and isinstance(v, dict):
            out[k] = strict(v, structural, _root=False)
        else:
            out[k] = v
    if (
        (_is_object(node) or "properties" in node)
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and ("properties" in node or structural)
    ):
        out["additionalProperties"] = False
    if _root and structural:
        # the API server checks the object's own metadata as ObjectMeta (done separately, below)
        out["properties"]["metadata"] = {"type": "object"}
    return out


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: ``map`` keys and ``set`` items must be unique."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                yield ValidationError(f"duplicate value {item!r} in a list of type set", path=[i])
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen:
                yield ValidationError(
                    f"duplicate entry {dict(zip(keys, key, strict=True))} (also item {seen[key]})",
                    path=[i],
                )
            seen.setdefault(key, i)


def _cel(validator, rules, instance, schema):
    yield ValidationError(
        "this field has CEL rules the tests do not evaluate: "
        + "; ".join(r.get("rule", "?") for r in rules)
    )


def _type(validator, types, instance, schema):
    if instance is None and schema.get("nullable"):
        return
    yield from Draft202012Validator.VALIDATORS["type"](validator, types, instance, schema)


_FORMATS = FormatChecker([])
_FORMATS.checks("int32")(lambda v: not isinstance(v, int) or -(2**31) <= v < 2**31)
_FORMATS.checks("int64")(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63)

K8sValidator = jsonschema.validators.extend(
    Draft202012Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel, "type": _type},
)


@functools.cache
def _crd(version: str, kind: str):
    raw = json.loads((SCHEMAS / f"kuberay-{version}" / CRD_FILES[kind]).read_text())
    src = raw["x-stseg-source"]
    return K8sValidator(
        strict(raw, structural=True), format_checker=_FORMATS
    ), f"{src['group']}/{src['version']}"


@functools.cache
def _core(definition: str):
    defs = json.loads((K8S_DIR / "core-v1.json").read_text())["$defs"]
    schema = {
        "$ref": f"#/$defs/{definition}",
        "$defs": {n: strict(s, structural=False, _root=False) for n, s in defs.items()},
    }
    return K8sValidator(schema, format_checker=_FORMATS)


def field_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def _messages(validator, instance, prefix: str) -> list[str]:
    out = []
    for e in validator.iter_errors(instance):
        head = [prefix] if prefix else []
        where = field_path([*head, *e.absolute_path])
        if e.validator == "additionalProperties" and e.validator_value is False:
            declared = set(e.schema.get("properties", {}))
            for extra in sorted(k for k in e.instance if k not in declared):
                out.append(f"{field_path([*head, *e.absolute_path, extra])}: unknown field")
        else:
            out.append(f"{where}: {e.message}")
    return sorted(set(out))


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(field path, pod template) of every pod template a RayCluster or RayJob carries."""
    spec = doc.get("spec") or {}
    out = []
    if doc.get("kind") == "RayJob":
        if "submitterPodTemplate" in spec:
            out.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
        cluster, base = spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec"
    elif doc.get("kind") == "RayCluster":
        cluster, base = spec, "spec"
    else:
        return []
    if "template" in (cluster.get("headGroupSpec") or {}):
        out.append((f"{base}.headGroupSpec.template", cluster["headGroupSpec"]["template"]))
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        if "template" in g:
            out.append((f"{base}.workerGroupSpecs[{i}].template", g["template"]))
    return out


def _operator_rules(doc: dict) -> list[str]:
    """What KubeRay's own validation (not the schema) rejects, for the fields used here."""
    out = []
    name, kind = (doc.get("metadata") or {}).get("name"), doc["kind"]
    if isinstance(name, str) and (len(name) > MAX_NAME[kind] or not DNS1035_LABEL.match(name)):
        out.append(
            f"metadata.name: {name!r}: KubeRay wants a DNS-1035 label of at most "
            f"{MAX_NAME[kind]} characters for a {kind}"
        )
    spec = doc.get("spec") or {}
    cluster, base = (
        (spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec")
        if kind == "RayJob"
        else (spec, "spec")
    )
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        lo, n, hi = (
            g.get("minReplicas", 0),
            g.get("replicas", g.get("minReplicas", 0)),
            g.get("maxReplicas"),
        )
        if all(isinstance(x, int) for x in (lo, n, hi)) and not 0 <= lo <= n <= hi:
            out.append(
                f"{base}.workerGroupSpecs[{i}]: need 0 <= minReplicas ({lo}) <= replicas ({n}) "
                f"<= maxReplicas ({hi})"
            )
    return out


def problems(doc: dict, kuberay: str) -> list[str]:
    """Every reason the API server (with the CRDs of KubeRay ``kuberay``) would reject ``doc``, as
    ``field.path: message``; empty when it would accept it.
    """
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if kind in CRD_FILES:
        validator, want_api = _crd(kuberay, kind)
        if api != want_api:
            return [f"apiVersion: {api!r} is not served by the KubeRay {kuberay} CRD ({want_api})"]
        out = _messages(validator, doc, "")
        out += _messages(_core(OBJECT_META), doc.get("metadata") or {}, "metadata")
        out += _operator_rules(doc)
        for path, template in pod_templates(doc):
            out += [
                f"{m} (Kubernetes PodTemplateSpec)"
                for m in _messages(_core(POD_TEMPLATE), template, path)
            ]
    elif (api, kind) in BUILTIN:
        out = _messages(_core(BUILTIN[(api, kind)]), doc, "")
    else:
        why = "every object shipped must be validated"
        return [f"no schema for apiVersion {api!r} kind {kind!r}: {why}"]
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        out.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    return sorted(set(out))

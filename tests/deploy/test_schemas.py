"""The vendored schemas: where they came from, that the size-reducing rewrite loses nothing, and
that the strict loader closes exactly the objects the API server closes.
"""

from __future__ import annotations

import importlib.util
import json
import re

from jsonschema import Draft202012Validator

from .k8s_schema import KUBERAY_VERSIONS, SCHEMAS, K8sValidator, strict

_spec = importlib.util.spec_from_file_location("make_schemas", SCHEMAS / "make_schemas.py")
make_schemas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_schemas)


def test_vendored_files_name_their_source():
    assert KUBERAY_VERSIONS == list(make_schemas.KUBERAY_TAGS)
    for tag in make_schemas.KUBERAY_TAGS:
        for name, path in make_schemas.KUBERAY_CRDS.items():
            f = SCHEMAS / f"kuberay-{tag}" / f"{name}.json"
            schema = json.loads(f.read_text())
            src = schema["x-stseg-source"]
            assert (src["tag"], src["path"], src["group"], src["version"]) == (
                tag,
                path,
                "ray.io",
                "v1",
            )
            assert src["kind"].lower() == name
            assert re.fullmatch(r"[0-9a-f]{40}", src["commit"])
            assert tag in schema["$comment"] and src["commit"] in schema["$comment"]
            Draft202012Validator.check_schema(schema)
            assert f.stat().st_size < 100_000, f"{f.name}: keep vendored schemas small"
    core = SCHEMAS / f"k8s-{make_schemas.K8S_VERSION}" / "core-v1.json"
    schema = json.loads(core.read_text())
    assert set(make_schemas.K8S_ROOTS) <= set(schema["$defs"])
    assert schema["x-stseg-source"]["kubernetes"] == make_schemas.K8S_VERSION
    assert len(list(SCHEMAS.glob("k8s-v*"))) == 1


def test_dedupe_is_lossless_and_descriptions_only_go_as_keywords():
    pod = {
        "type": "object",
        "description": "a pod",
        "properties": {
            "description": {"type": "string", "description": "a field named description"},
            "containers": {
                "type": "array",
                "items": {"type": "object", "properties": {"n" * 900: {"type": "string"}}},
            },
        },
    }
    schema = make_schemas.drop_descriptions(
        {"type": "object", "properties": {"head": pod, "worker": pod, "job": {"type": "object"}}}
    )
    assert "description" in schema["properties"]["head"]["properties"]  # the field stays
    assert "description" not in schema["properties"]["head"]
    small = make_schemas.dedupe(schema)
    assert small["properties"]["head"] == small["properties"]["worker"]
    assert small["properties"]["head"]["$ref"].startswith("#/$defs/head-")
    assert make_schemas.inline(small, small["$defs"]) == schema


def test_strict_closes_what_the_api_server_prunes():
    schema = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {
                    "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "map": {"type": "object", "additionalProperties": {"type": "string"}},
                    "empty": {"type": "object"},
                },
            },
        },
    }
    doc = {
        "metadata": {"name": "x", "labels": {}},
        "spec": {"open": {"any": 1}, "map": {"k": "v"}, "empty": {}},
    }
    crd = K8sValidator(strict(schema, structural=True))
    assert list(crd.iter_errors(doc)) == []
    for path, key in (("spec", "typo"), ("empty", "x")):
        bad = json.loads(json.dumps(doc))
        (bad["spec"] if path == "spec" else bad["spec"]["empty"])[key] = 1
        assert [e.message for e in crd.iter_errors(bad)] != [], (path, key)
    # Kubernetes' own schemas: an object without properties is free-form, not empty
    core = K8sValidator(strict(schema["properties"]["spec"], structural=False, _root=False))
    assert list(core.iter_errors({"empty": {"x": 1}})) == []
    assert list(core.iter_errors({"typo": 1})) != []

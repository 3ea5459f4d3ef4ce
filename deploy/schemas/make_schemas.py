"""Write the trimmed JSON schemas in this folder (run: python deploy/schemas/make_schemas.py).

Hand-written from the KubeRay v1 CRD field reference (ray.io/v1 RayCluster, RayJob; KubeRay 1.2+)
and the Kubernetes core/v1 API reference, restricted to the fields these manifests may use, with
``additionalProperties: false`` on every object we validate: a misspelt or misplaced key fails.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def obj(props, required=(), open_=False):
    s = {"type": "object", "properties": props, "additionalProperties": open_}
    if required:
        s["required"] = list(required)
    return s


STR = {"type": "string"}
INT = {"type": "integer"}
NONNEG = {"type": "integer", "minimum": 0}
BOOL = {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRLIST = {"type": "array", "items": STR}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
QUANTITY = {"oneOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"}]}
RESOURCE_NAME = r"^(cpu|memory|ephemeral-storage|nvidia\.com/gpu|amd\.com/gpu|hugepages-[0-9A-Za-z]+)$"
RESOURCE_LIST = {"type": "object", "propertyNames": {"pattern": RESOURCE_NAME},
                 "additionalProperties": QUANTITY}
RESOURCES = obj({"limits": RESOURCE_LIST, "requests": RESOURCE_LIST})
SECRET_KEY_REF = obj({"name": NAME, "key": STR, "optional": BOOL}, ["name", "key"])
ENV_VAR = obj({
    "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*$"},
    "value": STR,
    "valueFrom": obj({
        "secretKeyRef": SECRET_KEY_REF,
        "configMapKeyRef": SECRET_KEY_REF,
        "fieldRef": obj({"fieldPath": STR, "apiVersion": STR}, ["fieldPath"]),
        "resourceFieldRef": obj({"resource": STR, "containerName": STR, "divisor": QUANTITY}, ["resource"]),
    }),
}, ["name"])
ENV_FROM = obj({"prefix": STR, "secretRef": obj({"name": NAME, "optional": BOOL}, ["name"]),
                "configMapRef": obj({"name": NAME, "optional": BOOL}, ["name"])})
EXEC = obj({"exec": obj({"command": STRLIST}, ["command"])}, ["exec"])
SEC_CTX = obj({"runAsNonRoot": BOOL, "runAsUser": NONNEG, "runAsGroup": NONNEG, "fsGroup": NONNEG,
               "allowPrivilegeEscalation": BOOL, "readOnlyRootFilesystem": BOOL,
               "capabilities": obj({"drop": STRLIST, "add": STRLIST})})
CONTAINER = obj({
    "name": NAME, "image": STR,
    "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": STRLIST, "args": STRLIST, "workingDir": STR,
    "env": {"type": "array", "items": ENV_VAR},
    "envFrom": {"type": "array", "items": ENV_FROM},
    "ports": {"type": "array", "items": obj({"name": STR, "containerPort": {"type": "integer", "minimum": 1,
                                                                             "maximum": 65535},
                                             "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ["containerPort"])},
    "resources": RESOURCES,
    "lifecycle": obj({"preStop": EXEC, "postStart": EXEC}),
    "volumeMounts": {"type": "array", "items": obj({"name": NAME, "mountPath": STR, "readOnly": BOOL,
                                                     "subPath": STR}, ["name", "mountPath"])},
    "securityContext": SEC_CTX,
}, ["name", "image"])
VOLUME = obj({"name": NAME, "emptyDir": obj({"medium": STR, "sizeLimit": QUANTITY}),
              "configMap": obj({"name": NAME, "optional": BOOL}, ["name"]),
              "secret": obj({"secretName": NAME, "optional": BOOL}, ["secretName"])}, ["name"])
TOLERATION = obj({"key": STR, "operator": {"enum": ["Exists", "Equal"]}, "value": STR,
                  "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}})
META_LITE = obj({"labels": STRMAP, "annotations": STRMAP})
POD_TEMPLATE = obj({
    "metadata": META_LITE,
    "spec": obj({
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "initContainers": {"type": "array", "items": CONTAINER},
        "volumes": {"type": "array", "items": VOLUME},
        "serviceAccountName": NAME,
        "nodeSelector": STRMAP,
        "tolerations": {"type": "array", "items": TOLERATION},
        "securityContext": SEC_CTX,
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
        "terminationGracePeriodSeconds": NONNEG,
    }, ["containers"]),
}, ["spec"])
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
HEAD = obj({"rayStartParams": RAY_START_PARAMS, "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
            "enableIngress": BOOL, "template": POD_TEMPLATE}, ["template"])
WORKER = obj({"groupName": NAME, "replicas": NONNEG, "minReplicas": NONNEG, "maxReplicas": NONNEG,
              "idleTimeoutSeconds": NONNEG, "numOfHosts": {"type": "integer", "minimum": 1}, "suspend": BOOL,
              "rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE},
             ["groupName", "maxReplicas", "template"])
AUTOSCALER = obj({"upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                  "idleTimeoutSeconds": NONNEG, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                  "resources": RESOURCES, "env": {"type": "array", "items": ENV_VAR},
                  "version": {"enum": ["v1", "v2"]}})
RAYCLUSTER_SPEC = obj({
    "rayVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
    "enableInTreeAutoscaling": BOOL,
    "autoscalerOptions": AUTOSCALER,
    "headGroupSpec": HEAD,
    "workerGroupSpecs": {"type": "array", "items": WORKER},
    "suspend": BOOL,
}, ["headGroupSpec"])
OBJ_META = obj({"name": NAME, "namespace": NAME, "labels": STRMAP, "annotations": STRMAP}, ["name"])


def top(kind, api, spec):
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": f"{api} {kind} (trimmed)",
            **obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": OBJ_META, "spec": spec},
                  ["apiVersion", "kind", "metadata", "spec"])}


SCHEMAS = {
    "raycluster-ray.io-v1.json": top("RayCluster", "ray.io/v1", RAYCLUSTER_SPEC),
    "rayjob-ray.io-v1.json": top("RayJob", "ray.io/v1", obj({
        "entrypoint": {"type": "string", "minLength": 1},
        "runtimeEnvYAML": STR,
        "jobId": STR,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "shutdownAfterJobFinishes": BOOL,
        "ttlSecondsAfterFinished": NONNEG,
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": NONNEG,
        "submitterConfig": obj({"backoffLimit": NONNEG}),
        "submitterPodTemplate": POD_TEMPLATE,
        "entrypointNumCpus": {"type": "number", "minimum": 0},
        "entrypointNumGpus": {"type": "number", "minimum": 0},
        "rayClusterSpec": RAYCLUSTER_SPEC,
        "clusterSelector": STRMAP,
        "suspend": BOOL,
    }, ["entrypoint"])),
    "configmap-v1.json": {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "v1 ConfigMap",
                          **obj({"apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"},
                                 "metadata": OBJ_META, "data": STRMAP}, ["apiVersion", "kind", "metadata"])},
}

if __name__ == "__main__":
    for name, schema in SCHEMAS.items():
        (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print("wrote", HERE / name)

"""Kubernetes Pod Security Standards, profile "restricted" (which includes "baseline"), for pods.

The rules are those of https://kubernetes.io/docs/concepts/security/pod-security-standards/ as the
PodSecurity admission controller enforces them on a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``. :func:`kuberay_pods` builds the pods KubeRay
(1.2.2 to 1.7.0, read from its source) makes from a RayCluster or RayJob: the head gets the
autoscaler sidecar whose securityContext is ``autoscalerOptions.securityContext``; each worker gets
the ``wait-gcs-ready`` init container with a copy of the Ray container's securityContext; a RayJob
in K8sJobMode gets a submitter pod from ``submitterPodTemplate`` or, without one, a default with no
securityContext at all.
"""

from __future__ import annotations

import copy

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {
    None,
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}


def _containers(spec: dict):
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            yield f"{kind}[{i}]", c


def restricted_violations(spec: dict, where: str = "spec") -> list[str]:
    """Every rule of the restricted profile that pod spec ``spec`` breaks, as ``path: why``."""
    out = []
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{where}.{field}: must be unset or false")
    for i, v in enumerate(spec.get("volumes") or []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(
                f"{where}.volumes[{i}]: volume type {sorted(kinds - ALLOWED_VOLUMES)} not allowed"
            )
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"{where}.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{where}.securityContext.windowsOptions.hostProcess: must not be true")
    out += _selinux(psc, f"{where}.securityContext")
    if psc.get("runAsUser") == 0:
        out.append(f"{where}.securityContext.runAsUser: must not be 0")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append(
            f"{where}.securityContext.appArmorProfile.type: must be RuntimeDefault or Localhost"
        )
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"{where}.securityContext.seccompProfile.type: {pod_seccomp!r} not allowed")
    for name, c in _containers(spec):
        at = f"{where}.{name}"
        mark = len(out)
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{at}.securityContext.privileged: must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{at}.securityContext.windowsOptions.hostProcess: must not be true")
        for j, p in enumerate(c.get("ports") or []):
            if p.get("hostPort"):
                out.append(f"{at}.ports[{j}].hostPort: must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{at}.securityContext.procMount: must be Default")
        out += _selinux(sc, f"{at}.securityContext")
        if (sc.get("appArmorProfile") or {}).get("type") not in (
            None,
            "RuntimeDefault",
            "Localhost",
        ):
            out.append(
                f"{at}.securityContext.appArmorProfile.type: must be RuntimeDefault or Localhost"
            )
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}.securityContext.allowPrivilegeEscalation: must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{at}.securityContext.capabilities.drop: must include ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            out.append(
                f"{at}.securityContext.capabilities.add: only NET_BIND_SERVICE allowed, "
                f"not {sorted(added - {'NET_BIND_SERVICE'})}"
            )
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(
                f"{at}.securityContext.runAsNonRoot: must be true "
                "(here or in the pod securityContext)"
            )
        if sc.get("runAsUser") == 0:
            out.append(f"{at}.securityContext.runAsUser: must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(
                f"{at}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost "
                "(here or in the pod securityContext)"
            )
        out[mark:] = [f"{m} [{c.get('name')}]" for m in out[mark:]]
    return out


def _selinux(sc: dict, at: str) -> list[str]:
    se = sc.get("seLinuxOptions") or {}
    out = []
    if se.get("type") not in SELINUX_TYPES:
        out.append(f"{at}.seLinuxOptions.type: {se.get('type')!r} not allowed")
    for k in ("user", "role"):
        if se.get(k):
            out.append(f"{at}.seLinuxOptions.{k}: must be unset")
    return out


def kuberay_pods(doc: dict) -> list[tuple[str, dict]]:
    """(field path of the template, pod spec as KubeRay creates it) for a RayCluster or RayJob."""
    spec = doc["spec"]
    out = []
    if doc["kind"] == "RayJob":
        cluster, base = spec["rayClusterSpec"], "spec.rayClusterSpec"
        if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
            if "submitterPodTemplate" in spec:
                out.append(
                    (
                        "spec.submitterPodTemplate.spec",
                        copy.deepcopy(spec["submitterPodTemplate"]["spec"]),
                    )
                )
            else:  # KubeRay's GetDefaultSubmitterTemplate: one container, no securityContext
                out.append(
                    (
                        "spec.submitterPodTemplate(KubeRay default).spec",
                        {"containers": [{"name": "ray-job-submitter"}], "restartPolicy": "Never"},
                    )
                )
    else:
        cluster, base = spec, "spec"
    head = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        sc = (cluster.get("autoscalerOptions") or {}).get("securityContext")
        head["containers"].append({"name": "autoscaler", **({"securityContext": sc} if sc else {})})
    out.append((f"{base}.headGroupSpec.template.spec", head))
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        pod = copy.deepcopy(g["template"]["spec"])
        ray = pod["containers"][0]
        init = {
            "name": "wait-gcs-ready",
            **({"securityContext": ray["securityContext"]} if "securityContext" in ray else {}),
        }
        pod["initContainers"] = [*(pod.get("initContainers") or []), init]
        out.append((f"{base}.workerGroupSpecs[{i}].template.spec", pod))
    return out

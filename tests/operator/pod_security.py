"""Pod Security Admission's `restricted` level, as a check of a pod template.

The Pod Security Standards (Kubernetes 1.28 and later): the baseline's checks plus the
restricted ones, enough to tell whether a namespace labelled
`pod-security.kubernetes.io/enforce: restricted` admits a pod.
"""

from __future__ import annotations

_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                 "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                 "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                 "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t",
                  "container_engine_t"}


def restricted_violations(template: dict) -> list[str]:
    """What Pod Security Admission at `restricted` would refuse in a pod template."""
    meta, spec = template.get("metadata") or {}, template["spec"]
    psc = spec.get("securityContext") or {}
    containers = [*spec.get("initContainers", []), *spec["containers"],
                  *spec.get("ephemeralContainers", [])]
    bad = [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    bad += [f"volume {v['name']}" for v in spec.get("volumes", [])
            if set(v) - {"name"} - _RESTRICTED_VOLUMES]
    bad += [f"sysctl {s['name']}" for s in psc.get("sysctls", [])
            if s["name"] not in _SAFE_SYSCTLS]
    for key, value in meta.get("annotations", {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            bad.append(f"annotation {key}")
    for where, sc in [("pod", psc), *((c["name"], c.get("securityContext") or {})
                                     for c in containers)]:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{where}: hostProcess")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in _SELINUX_TYPES or se.get("user") or se.get("role"):
            bad.append(f"{where}: seLinuxOptions")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{where}: seccomp Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault",
                                                                  "Localhost"):
            bad.append(f"{where}: appArmorProfile")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault",
                                                                      "Localhost")
    for c in containers:
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{c['name']}: procMount")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{c['name']}: hostPort")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{c['name']}: runAsNonRoot")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not (seccomp in ("RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp)):
            bad.append(f"{c['name']}: seccompProfile")
    return bad

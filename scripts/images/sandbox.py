#!/usr/bin/env python3
"""Run a built image's container the way its Kubernetes pod spec says, without a kubelet.

    python3 scripts/images/sandbox.py --image IMAGE --pod POD.json [--termination-log FILE]
        [--field metadata.name=VALUE] [-- EXTRA_ARG ...]

POD.json holds a pod spec, or a Deployment or Job whose pod template is used; its first
container runs. Like the kubelet: the image's entrypoint and environment unless the container
overrides them, the user and group of the securityContext (the image's USER otherwise), the
root file system read-only when readOnlyRootFilesystem says so, each emptyDir a fresh tmpfs,
/proc, a minimal /dev with /dev/shm, and the termination message file bind-mounted from the
host. The network stays the host's, so loopback reaches servers started next to it.

Root only: the image is mounted from buildah's storage (vfs) and entered with unshare (mount
and PID namespaces) and chroot. Not emulated: seccomp, no_new_privs, resource limits and any
volume other than emptyDir. SIGTERM and SIGINT reach the container's process; the exit code is
its exit code. docs/images.md explains the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "critbatch-images"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                  "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def buildah(store: Path, *args: str) -> str:
    """Run buildah on this store (vfs driver) and return its stdout."""
    cmd = ["buildah", "--root", str(store / "storage"), "--runroot", str(store / "run"),
           "--storage-driver", "vfs", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a pod spec, a Pod, or a Deployment, Job or other pod template holder."""
    if "containers" in doc:
        return doc
    spec = doc.get("spec", {})
    if "containers" in spec:
        return spec
    return spec["template"]["spec"]


def tmpfs_size(size_limit: str | None) -> str:
    """An emptyDir's sizeLimit (a Kubernetes quantity) as tmpfs's size option, in bytes."""
    if not size_limit:
        return ""
    for suffix, factor in QUANTITY_UNITS.items():
        if size_limit.endswith(suffix):
            return f",size={int(float(size_limit[: -len(suffix)]) * factor)}"
    return f",size={int(float(size_limit))}"


def container_env(image_env: list[str], container: dict[str, Any],
                  fields: dict[str, str]) -> list[str]:
    """NAME=VALUE pairs: the image's, then the container's (fieldRefs from `fields`)."""
    env = dict(e.split("=", 1) for e in image_env)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if ref not in fields:
            raise SystemExit(f"sandbox: env {item['name']}: no value for {ref or item}; "
                             f"give --field {ref}=VALUE")
        env[item["name"]] = fields[ref]
    return [f"{k}={v}" for k, v in env.items()]


def argv(config: dict[str, Any], container: dict[str, Any], extra: list[str]) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint, args replace the image's CMD."""
    command = container.get("command") or config.get("Entrypoint") or []
    if "args" in container:
        args = container["args"]
    else:
        args = [] if container.get("command") else (config.get("Cmd") or [])
    return [*command, *args, *extra]


def identity(config: dict[str, Any], pod: dict[str, Any],
             container: dict[str, Any]) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups): runAsUser and runAsGroup of the container, else of
    the pod, else the image's USER (whose group defaults to the uid); fsGroup and
    supplementalGroups join the groups."""
    pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
    user, _, group = (config.get("User") or "0").partition(":")
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", user))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", group or uid))
    if not str(uid).isdigit() or not str(gid).isdigit():
        raise SystemExit(f"sandbox: the user must be numeric, got {uid}:{gid}")
    if (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")) and int(uid) == 0:
        raise SystemExit("sandbox: runAsNonRoot, but the container would run as root")
    groups = [int(gid)] + [int(g) for g in [pod_ctx.get("fsGroup")] if g is not None]
    groups += [int(g) for g in pod_ctx.get("supplementalGroups", [])]
    return int(uid), int(gid), sorted(set(groups))


def setup_script(root: str, pod: dict[str, Any], container: dict[str, Any],
                 termination_log: str) -> list[str]:
    """Shell lines that build the container's mounts under `root` (run in a new namespace)."""
    q = shlex.quote
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    lines = ["set -eu"]
    mounts = []
    for m in container.get("volumeMounts", []):
        volume = volumes[m["name"]]
        if "emptyDir" not in volume:
            raise SystemExit(f"sandbox: volume {m['name']}: only emptyDir is supported")
        if m["mountPath"] == "/dev/shm":
            continue
        mounts.append((m["mountPath"], tmpfs_size(volume["emptyDir"].get("sizeLimit"))))
        lines.append(f"mkdir -p {q(root + m['mountPath'])}")
    lines.append(f"mount --bind {q(root)} {q(root)}")
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        lines.append(f"mount -o remount,bind,ro {q(root)}")
    lines += [
        f"mount -t proc -o nosuid,nodev,noexec proc {q(root + '/proc')}",
        f"mount -t tmpfs -o mode=0755,nosuid dev {q(root + '/dev')}",
        f"mkdir {q(root + '/dev/shm')}",
        f"mount -t tmpfs -o mode=1777,nosuid,nodev shm {q(root + '/dev/shm')}",
    ]
    for dev in DEVICES:
        lines += [f"touch {q(root + '/dev/' + dev)}",
                  f"mount --bind /dev/{dev} {q(root + '/dev/' + dev)}"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        lines.append(f"ln -s /proc/self/fd/{i} {q(root + '/dev/' + name)}")
    lines.append(f"ln -s /proc/self/fd {q(root + '/dev/fd')}")
    for path, size in mounts:
        lines.append(f"mount -t tmpfs -o mode=0777,nosuid,nodev{size} emptydir {q(root + path)}")
    log_path = root + container.get("terminationMessagePath", "/dev/termination-log")
    lines += [f"mkdir -p {q(os.path.dirname(log_path))}", f"touch {q(log_path)}",
              f"mount --bind {q(termination_log)} {q(log_path)}"]
    return lines


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def run(args: argparse.Namespace) -> int:
    doc = json.loads(Path(args.pod).read_text())
    pod = pod_spec(doc)
    container = pod["containers"][0]
    config = json.loads(buildah(args.store, "inspect", "--type", "image", args.image))
    config = config["OCIv1"]["config"]
    fields = {"metadata.name": "sandbox", "metadata.namespace": "default",
              **dict(f.split("=", 1) for f in args.field)}
    env = container_env(config.get("Env") or [], container, fields)
    command = argv(config, container, args.extra)
    uid, gid, groups = identity(config, pod, container)
    workdir = container.get("workingDir") or config.get("WorkingDir") or "/"
    if args.termination_log:
        log = args.termination_log
    else:
        fd, log = tempfile.mkstemp(prefix="termination-log-")
        os.close(fd)
    os.chmod(log, 0o666)  # as the kubelet leaves it: the container's user writes it
    ctr = buildah(args.store, "from", "--pull-never", args.image)
    try:
        root = buildah(args.store, "mount", ctr)
        script = setup_script(root, pod, container, log)
        q = shlex.quote
        script += [
            f"chroot --userspec={uid}:{gid} --groups={','.join(map(str, groups))} {q(root)} "
            f"/usr/bin/env -i -C {q(workdir)} {' '.join(map(q, env + command))} &",
            "child=$!",
            "trap 'kill -TERM $child 2>/dev/null' TERM INT",
            "rc=0; wait $child || rc=$?",
            "if kill -0 $child 2>/dev/null; then rc=0; wait $child || rc=$?; fi",
            "exit $rc",
        ]
        proc = subprocess.Popen(["unshare", "--mount", "--pid", "--kill-child",
                                 "bash", "-c", "\n".join(script)])

        def forward(signum: int, _frame: Any) -> None:
            for pid in children(proc.pid):
                os.kill(pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return proc.wait()
    finally:
        buildah(args.store, "rm", ctr)
        if not args.termination_log:
            os.unlink(log)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="image name in the store")
    p.add_argument("--pod", required=True, help="JSON: a pod spec, Pod, Deployment or Job")
    p.add_argument("--store", type=Path,
                   default=Path(os.environ.get("CRITBATCH_IMAGE_STORE", DEFAULT_STORE)),
                   help="buildah's storage as scripts/images/build.sh left it")
    p.add_argument("--termination-log", help="host file to mount as the termination message")
    p.add_argument("--field", action="append", default=[], metavar="PATH=VALUE",
                   help="value of an env fieldRef (default metadata.name, metadata.namespace)")
    p.add_argument("extra", nargs="*", help="arguments appended to the container's")
    args = p.parse_args()
    if os.geteuid() != 0:
        p.error("needs root (buildah's storage, mount namespaces, chroot)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

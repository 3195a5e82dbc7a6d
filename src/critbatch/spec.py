"""The CriticalBatchSweep spec as frozen plain data: parsing, defaults, validation, trainer argv.

The CRD's schema is the contract; `parse_sweep` applies the same defaults and checks the same
rules (so the local runner, which has no API server, rejects what the cluster would), plus the
checks a schema cannot make: batch sizes larger than a known dataset, optimizer settings the
trainer cannot take. Every error names the field, e.g. ``spec.batchSizes[2]: must be positive``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

from critbatch.errors import InputError
from critbatch.science import OPTIMIZERS, PAPER_LEARNING_RATES, OptimizerSetting, ScienceError
from critbatch.vocabulary import TrialKey, default_eval_every

GROUP = "critbatch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CriticalBatchSweep"
PLURAL = "criticalbatchsweeps"

MODELS = ("dcgan", "wgan-gp", "biggan")
DATASETS = ("digits", "faces", "imagefolder", "lsun", "celeba")
BUILTIN_DATASETS = ("digits", "faces")
# Training examples of the built-in datasets whose size is fixed (scikit-learn's 8x8 digits).
KNOWN_DATASET_SIZES = {"digits": 1797}
DEVICES = ("auto", "cpu", "cuda")
METRIC_SOURCES = ("auto", "prometheus", "direct")
MAX_BATCH = 1 << 20
MAX_TRIALS_PER_GPU = 8  # their result lines must fit one 4 KiB termination message
# What the trial Job already has (critbatch_operator.jobs): a pod template must not reuse them.
JOB_VOLUMES = ("scratch", "tmp", "dshm", "dataset", "inception", "checkpoints")
JOB_MOUNT_PATHS = ("/scratch", "/scratch/cache", "/tmp", "/dev/shm", "/data", "/inception",
                   "/checkpoints")

# Dot-separated DNS-1123 labels, as the API server checks object names (and the CRD's pattern).
_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL_RE}(\.{_LABEL_RE})*$")
_DNS1123_LABEL = re.compile(rf"^{_LABEL_RE}$")
_URL = re.compile(r"^https?://\S+$")


class SpecError(InputError):
    """A sweep manifest the project cannot run; the message starts with the field's path."""


@dataclass(frozen=True)
class Dataset:
    name: str = "digits"
    path: str | None = None
    pvc: str | None = None
    size: int | None = None

    @property
    def known_size(self) -> int | None:
        """|S| when the spec says it or the dataset is built in with a fixed size."""
        return self.size if self.size is not None else KNOWN_DATASET_SIZES.get(self.name)


@dataclass(frozen=True)
class Inception:
    """Inception weights: `file` relative to the root of claim `pvc`, or an absolute path."""

    pvc: str | None
    file: str


@dataclass(frozen=True)
class Checkpoints:
    """Persistent checkpoints: claim `pvc` holds one directory per trial, named after its Job,
    so a retried pod (a new pod) resumes instead of starting over."""

    pvc: str


@dataclass(frozen=True)
class PodTemplate:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Trainer:
    image: str | None = None  # None: the operator's default trainer image
    image_pull_policy: str | None = None
    model: str = "dcgan"
    image_size: int | None = None
    channels: int | None = None
    # None: the trainer's default for the model, which for BigGAN is not the paper's network.
    width: int | None = None
    z_dim: int | None = None
    ema_start: int | None = None
    dataset: Dataset = field(default_factory=Dataset)
    inception: Inception | None = None
    device: str = "auto"
    gpus: int = 1
    resources: Mapping[str, Mapping[str, str | int]] = field(default_factory=dict)
    checkpoint_every: int = 0
    checkpoints: Checkpoints | None = None  # None: checkpoints die with the pod (emptyDir)
    backoff_limit: int = 2
    active_deadline_seconds: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    pod_template: PodTemplate = field(default_factory=PodTemplate)
    cuda_graph: bool = False
    bf16: bool = False
    reproducible_cpu: bool = False


@dataclass(frozen=True)
class OptimizerSide:
    """One network's optimizer settings, defaults already applied."""

    learning_rate: float
    beta1: float
    beta2: float
    eps: float


@dataclass(frozen=True)
class Optimizer:
    name: str
    generator: OptimizerSide
    discriminator: OptimizerSide

    def setting(self) -> OptimizerSetting:
        """The generator's setting, which is what Proposition 3.4 speaks of."""
        g = self.generator
        return OptimizerSetting(self.name, g.learning_rate, g.beta1, g.beta2)


@dataclass(frozen=True)
class Target:
    fid_threshold: float
    max_steps: int
    eval_every: int | None = None  # None: the trainer's default for the dataset
    eval_samples: int | None = None


@dataclass(frozen=True)
class Pruning:
    sfo_bound: bool = True


class StrategyType(StrEnum):
    """How trials are chosen: every batch size and seed, or where the answer is still open."""

    grid = "grid"
    adaptive = "adaptive"


# The plausible set's level when spec.strategy.confidence is unset: a grid reports at 95 %,
# an adaptive sweep stops adding trials once its most probable batch size holds 90 %.
DEFAULT_CONFIDENCE = {StrategyType.grid: 0.95, StrategyType.adaptive: 0.9}


@dataclass(frozen=True)
class Strategy:
    """`max_trials` caps the trials an adaptive sweep starts (None: the whole grid x seeds)."""

    type: StrategyType = StrategyType.grid
    confidence: float = DEFAULT_CONFIDENCE[StrategyType.grid]
    max_trials: int | None = None


@dataclass(frozen=True)
class EstimateTarget:
    optimizer: str
    learning_rate: float
    beta1: float
    beta2: float
    name: str | None = None
    dataset_size: int | None = None
    generator_params: int | None = None

    def setting(self) -> OptimizerSetting:
        return OptimizerSetting(self.optimizer, self.learning_rate, self.beta1, self.beta2)


@dataclass(frozen=True)
class Reference:
    sweep: str | None = None
    noise_ratio: float | None = None
    generator_params: int | None = None
    dataset_size: int | None = None


@dataclass(frozen=True)
class Metrics:
    source: str = "auto"
    prometheus_url: str | None = None
    linger_seconds: int = 30


@dataclass(frozen=True)
class Sweep:
    """A parsed, defaulted, validated CriticalBatchSweep."""

    name: str
    namespace: str
    generation: int
    uid: str | None
    trainer: Trainer
    optimizer: Optimizer
    batch_sizes: tuple[int, ...]
    seeds: int
    target: Target
    parallelism: int = 4
    pruning: Pruning = field(default_factory=Pruning)
    estimate: tuple[EstimateTarget, ...] = ()
    reference: Reference | None = None
    metrics: Metrics = field(default_factory=Metrics)
    queue_name: str | None = None
    trials_per_gpu: int = 1
    strategy: Strategy = field(default_factory=Strategy)

    def trials(self) -> list[TrialKey]:
        """Every trial the sweep may run, batch size ascending, then seed (an adaptive sweep
        starts those of them its planner chooses)."""
        return [TrialKey(b, s) for b in sorted(self.batch_sizes) for s in range(self.seeds)]


# ---------------------------------------------------------------------------------------------
# Reading the manifest
# ---------------------------------------------------------------------------------------------


def _err(path: str, what: str) -> SpecError:
    return SpecError(f"{path}: {what}")


def _mapping(value: Any, path: str, *, default: Mapping[str, Any] | None = None) -> dict:
    if value is None and default is not None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise _err(path, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _no_unknown(obj: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
    for key in obj:
        if key not in known:
            raise _err(f"{path}.{key}", f"unknown field (expected one of {', '.join(known)})")


def _present(obj: Mapping[str, Any], key: str, p: str, required: bool) -> bool:
    """Whether `key` holds a value; a missing required one is an error naming the field."""
    if key in obj and obj[key] is not None:
        return True
    if required:
        raise _err(p, "required")
    return False


def _int(
    obj: Mapping[str, Any], key: str, path: str, *, default: int | None = None,
    required: bool = False, lo: int | None = None, hi: int | None = None,
) -> int | None:
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return default
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
            or int(v) != v:
        raise _err(p, f"must be an integer, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise _err(p, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise _err(p, f"must be <= {hi}, got {v}")
    return v


def _bool(obj: Mapping[str, Any], key: str, path: str, *, default: bool = False) -> bool:
    if not _present(obj, key, f"{path}.{key}", False):
        return default
    if not isinstance(obj[key], bool):
        raise _err(f"{path}.{key}", f"must be true or false, got {obj[key]!r}")
    return obj[key]


def _num(
    obj: Mapping[str, Any], key: str, path: str, *, required: bool = False,
    gt: float | None = None, ge: float | None = None, lt: float | None = None,
    le: float | None = None,
) -> float | None:
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _err(p, f"must be a finite number, got {v!r}")
    v = float(v)
    if gt is not None and not v > gt:
        raise _err(p, f"must be > {gt:g}, got {v:g}")
    if ge is not None and not v >= ge:
        raise _err(p, f"must be >= {ge:g}, got {v:g}")
    if lt is not None and not v < lt:
        raise _err(p, f"must be < {lt:g}, got {v:g}")
    if le is not None and not v <= le:
        raise _err(p, f"must be <= {le:g}, got {v:g}")
    return v


def _str(
    obj: Mapping[str, Any], key: str, path: str, *, default: str | None = None,
    required: bool = False, choices: Sequence[str] | None = None, max_len: int | None = None,
) -> str | None:
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return default
    v = obj[key]
    if not isinstance(v, str):
        raise _err(p, f"must be a string, got {v!r}")
    if choices is not None and v not in choices:
        raise _err(p, f"must be one of {', '.join(choices)}, got {v!r}")
    if max_len is not None and len(v) > max_len:
        raise _err(p, f"must be at most {max_len} characters")
    return v


def _str_map(value: Any, path: str) -> dict[str, str]:
    m = _mapping(value, path, default={})
    for k, v in m.items():
        if not isinstance(v, str):
            raise _err(f"{path}.{k}", f"must be a string, got {v!r}")
    return m


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(path, f"must be a list, got {type(value).__name__}")
    return value


def _metadata(manifest: Mapping[str, Any]) -> tuple[str, str, int, str | None]:
    api = manifest.get("apiVersion")
    if api != API_VERSION:
        raise _err("apiVersion", f"must be {API_VERSION}, got {api!r}")
    if manifest.get("kind") != KIND:
        raise _err("kind", f"must be {KIND}, got {manifest.get('kind')!r}")
    meta = _mapping(manifest.get("metadata"), "metadata", default={})
    name = _str(meta, "name", "metadata", required=True)
    if not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        raise _err("metadata.name", f"must be a DNS-1123 subdomain, got {name!r}")
    namespace = _str(meta, "namespace", "metadata", default="default")
    if not _DNS1123_LABEL.match(namespace) or len(namespace) > 63:
        raise _err("metadata.namespace", f"must be a DNS-1123 label, got {namespace!r}")
    generation = _int(meta, "generation", "metadata", default=1, lo=0)
    uid = meta.get("uid")
    return name, namespace, generation, uid if isinstance(uid, str) else None


def _parse_architecture(
    t: Mapping[str, Any], path: str, model: str, image_size: int | None, dataset: str,
) -> tuple[int | None, int | None, int | None]:
    """(width, zDim, emaStart); width and zDim set Θ, on which every Proposition 3.4 number
    depends."""
    width = _int(t, "width", path, lo=1, hi=512)
    z_dim = _int(t, "zDim", path, lo=1, hi=1024)
    ema_start = _int(t, "emaStart", path, lo=0)
    if model == "biggan" and z_dim is not None:
        # The trainer's default sizes; BigGAN gives each block and its first layer a chunk of z.
        size = image_size or {"digits": 16, "faces": 32}.get(dataset, 128)
        chunks = {32: 4, 64: 5, 128: 6}.get(size)
        if chunks and z_dim % chunks:
            raise _err(f"{path}.zDim", f"biggan at {size}x{size} splits z into {chunks} "
                                       f"equal chunks, got {z_dim}")
    if ema_start is not None and model != "biggan":
        raise _err(f"{path}.emaStart", f"only biggan keeps an EMA of its generator, not {model}")
    return width, z_dim, ema_start


def _parse_trainer(raw: Any) -> Trainer:
    path = "spec.trainer"
    t = _mapping(raw, path)
    _no_unknown(t, path, (
        "image", "imagePullPolicy", "model", "imageSize", "channels", "dataset", "inception",
        "width", "zDim", "emaStart",
        "device", "gpus", "resources", "checkpointEvery", "checkpoints", "backoffLimit",
        "activeDeadlineSeconds", "env", "podTemplate", "cudaGraph", "bf16", "reproducibleCPU",
    ))
    image = _str(t, "image", path)
    if image is not None and not image.strip():
        raise _err(f"{path}.image", "must not be empty")
    model = _str(t, "model", path, default="dcgan", choices=MODELS)
    image_size = _int(t, "imageSize", path, lo=8, hi=256)
    if image_size is not None:
        if model == "biggan" and image_size not in (32, 64, 128):
            raise _err(f"{path}.imageSize", f"biggan supports 32, 64 or 128, got {image_size}")
        if image_size & (image_size - 1) or image_size > 256:
            raise _err(f"{path}.imageSize",
                       f"{model} needs a power of two from 8 to 256, got {image_size}")
    channels = _int(t, "channels", path)
    if channels is not None and channels not in (1, 3):
        raise _err(f"{path}.channels", f"must be 1 or 3, got {channels}")

    dpath = f"{path}.dataset"
    d = _mapping(t.get("dataset"), dpath, default={})
    _no_unknown(d, dpath, ("name", "path", "pvc", "size"))
    dataset = Dataset(
        name=_str(d, "name", dpath, default="digits", choices=DATASETS),
        path=_str(d, "path", dpath),
        pvc=_str(d, "pvc", dpath, max_len=253),
        size=_int(d, "size", dpath, lo=1),
    )
    for key in ("path", "pvc"):
        if getattr(dataset, key) == "":
            raise _err(f"{dpath}.{key}", "must not be empty")
    if dataset.name not in BUILTIN_DATASETS and not (dataset.path or dataset.pvc):
        raise _err(dpath, f"the {dataset.name} dataset needs a path or a pvc")
    width, z_dim, ema_start = _parse_architecture(t, path, model, image_size, dataset.name)

    inception = None
    if t.get("inception") is not None:
        ipath = f"{path}.inception"
        i = _mapping(t["inception"], ipath)
        _no_unknown(i, ipath, ("pvc", "file"))
        inception = Inception(_str(i, "pvc", ipath, max_len=253),
                              _str(i, "file", ipath, required=True))
        if inception.pvc == "" or not inception.file:
            raise _err(ipath, "pvc and file must not be empty")
        if inception.pvc and (inception.file.startswith("/")
                              or ".." in inception.file.split("/")):
            raise _err(f"{ipath}.file", "with a pvc, must be a path relative to the volume's root")
        if not inception.pvc and not inception.file.startswith("/"):
            raise _err(f"{ipath}.file", "without a pvc, must be an absolute path")

    if inception is None and dataset.name not in BUILTIN_DATASETS:
        raise _err(f"{path}.inception",
                   f"required for the {dataset.name} dataset: FID on real images needs "
                   "Inception weights (pvc and file)")

    checkpoints = None
    if t.get("checkpoints") is not None:
        cpath = f"{path}.checkpoints"
        c = _mapping(t["checkpoints"], cpath)
        _no_unknown(c, cpath, ("pvc",))
        pvc = _str(c, "pvc", cpath, required=True)
        if len(pvc) > 253 or not _DNS1123_SUBDOMAIN.match(pvc):
            raise _err(f"{cpath}.pvc", "must be a PersistentVolumeClaim's name "
                                       f"(a DNS-1123 subdomain), got {pvc!r}")
        checkpoints = Checkpoints(pvc)

    resources: dict[str, dict[str, str | int]] = {}
    rpath = f"{path}.resources"
    r = _mapping(t.get("resources"), rpath, default={})
    _no_unknown(r, rpath, ("requests", "limits"))
    for kind in ("requests", "limits"):
        entries = _mapping(r.get(kind), f"{rpath}.{kind}", default={})
        for k, v in entries.items():
            if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
                raise _err(f"{rpath}.{kind}.{k}", f"must be a quantity, got {v!r}")
        if entries:
            resources[kind] = entries

    env = []
    for i, e in enumerate(_list(t.get("env"), f"{path}.env")):
        epath = f"{path}.env[{i}]"
        e = _mapping(e, epath)
        _no_unknown(e, epath, ("name", "value"))
        name = _str(e, "name", epath, required=True)
        if not name:
            raise _err(f"{epath}.name", "must not be empty")
        env.append((name, _str(e, "value", epath, default="")))

    cuda_graph = _bool(t, "cudaGraph", path)
    if cuda_graph and model != "dcgan":
        raise _err(f"{path}.cudaGraph", f"only dcgan captures its step as a CUDA graph, "
                                        f"not {model}")
    return Trainer(
        image=image,
        image_pull_policy=_str(t, "imagePullPolicy", path,
                               choices=("Always", "IfNotPresent", "Never")),
        model=model,
        image_size=image_size,
        channels=channels,
        width=width,
        z_dim=z_dim,
        ema_start=ema_start,
        dataset=dataset,
        inception=inception,
        device=_str(t, "device", path, default="auto", choices=DEVICES),
        gpus=_int(t, "gpus", path, default=1, lo=0, hi=16),
        resources=resources,
        checkpoint_every=_int(t, "checkpointEvery", path, default=0, lo=0),
        checkpoints=checkpoints,
        backoff_limit=_int(t, "backoffLimit", path, default=2, lo=0, hi=20),
        active_deadline_seconds=_int(t, "activeDeadlineSeconds", path, lo=1),
        env=tuple(env),
        pod_template=_parse_pod_template(t.get("podTemplate")),
        cuda_graph=cuda_graph,
        bf16=_bool(t, "bf16", path),
        reproducible_cpu=_bool(t, "reproducibleCPU", path),
    )


def _parse_pod_template(raw: Any) -> PodTemplate:
    path = "spec.trainer.podTemplate"
    p = _mapping(raw, path, default={})
    _no_unknown(p, path, (
        "labels", "annotations", "nodeSelector", "tolerations", "affinity", "priorityClassName",
        "runtimeClassName", "serviceAccountName", "imagePullSecrets", "volumes", "volumeMounts",
    ))

    def objects(key: str) -> tuple[dict, ...]:
        return tuple(_mapping(v, f"{path}.{key}[{i}]")
                     for i, v in enumerate(_list(p.get(key), f"{path}.{key}")))

    secrets = []
    for i, s in enumerate(objects("imagePullSecrets")):
        secrets.append(_str(s, "name", f"{path}.imagePullSecrets[{i}]", required=True))
    for i, m in enumerate(objects("volumeMounts")):
        mp = f"{path}.volumeMounts[{i}]"
        _str(m, "name", mp, required=True)
        mount = _str(m, "mountPath", mp, required=True).rstrip("/") or "/"
        if mount in JOB_MOUNT_PATHS:
            raise _err(f"{mp}.mountPath", f"{mount} is the trial's own; mount elsewhere")
    for i, v in enumerate(objects("volumes")):
        name = _str(v, "name", f"{path}.volumes[{i}]", required=True)
        if name in JOB_VOLUMES:
            raise _err(f"{path}.volumes[{i}].name", f"{name!r} is a volume the trial Job already "
                                                    f"has; choose another name")
    affinity = p.get("affinity")
    return PodTemplate(
        labels=_str_map(p.get("labels"), f"{path}.labels"),
        annotations=_str_map(p.get("annotations"), f"{path}.annotations"),
        node_selector=_str_map(p.get("nodeSelector"), f"{path}.nodeSelector"),
        tolerations=objects("tolerations"),
        affinity=_mapping(affinity, f"{path}.affinity") if affinity is not None else None,
        priority_class_name=_str(p, "priorityClassName", path),
        runtime_class_name=_str(p, "runtimeClassName", path),
        service_account_name=_str(p, "serviceAccountName", path),
        image_pull_secrets=tuple(secrets),
        volumes=objects("volumes"),
        volume_mounts=objects("volumeMounts"),
    )


# ---------------------------------------------------------------------------------------------
# What a sweep may ask of the operator
# ---------------------------------------------------------------------------------------------

# The operator creates trial Jobs with its own ServiceAccount for whoever may create a sweep, so
# by default a pod template may add only what cannot widen that person's access; a cluster
# administrator allows more by name (critbatch-operator --allow-pod-template). The local runner
# runs trials as its user's own processes and applies no policy.
VOLUME_SOURCES = (
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi",
    "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk",
    "gitRepo", "glusterfs", "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim",
    "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "secret",
    "storageos", "vsphereVolume",
)
SAFE_VOLUME_SOURCES = ("persistentVolumeClaim", "configMap", "emptyDir")
POD_TEMPLATE_ALLOWANCES = (
    "serviceAccountName", "runtimeClassName", "priorityClassName", "imagePullSecrets",
    "anyToleration", "crossNamespaceAffinity", "securityAnnotations", "kubernetesMetadata",
    *(v for v in VOLUME_SOURCES if v not in SAFE_VOLUME_SOURCES),
)
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# Annotations read by the kubelet, the container runtime or the CNI plugin: security profiles,
# sysctls, runtime sandboxes, extra networks, fixed IP addresses.
_SECURITY_WORDS = ("apparmor", "seccomp", "selinux", "security", "sysctl")
_RUNTIME_ANNOTATIONS = ("io.kubernetes.", "io.katacontainers.", "io.containerd.", "dev.gvisor.",
                        "k8s.v1.cni.cncf.io/", "v1.multus-cni.io/", "cni.projectcalico.org/")
_OWN = "own"  # the operator's own labels and annotations: no administrator may hand them out
_MANAGED_BY = "app.kubernetes.io/managed-by"


def _under(domain: str, root: str) -> bool:
    return domain == root or domain.endswith("." + root)


def _reserved(key: str, *, annotation: bool) -> str | None:
    """The allowance a label or annotation key needs, `_OWN` for never, None for none."""
    lower = key.lower()
    prefix = lower.partition("/")[0] if "/" in lower else ""
    if _under(prefix, GROUP) or lower == _MANAGED_BY:
        return _OWN
    if annotation and (any(w in lower for w in _SECURITY_WORDS)
                       or lower.startswith(_RUNTIME_ANNOTATIONS)):
        return "securityAnnotations"
    if _under(prefix, "kubernetes.io") or _under(prefix, "k8s.io"):
        return "kubernetesMetadata"
    return None


def _cross_namespace_terms(affinity: Any, path: str) -> list[str]:
    """Paths of pod (anti-)affinity terms that look at pods of other namespaces."""
    found: list[str] = []
    if not isinstance(affinity, Mapping):
        return found
    for kind in ("podAffinity", "podAntiAffinity"):
        rules = affinity.get(kind)
        for when, terms in (rules.items() if isinstance(rules, Mapping) else ()):
            for i, term in enumerate(terms if isinstance(terms, list) else ()):
                p = f"{path}.{kind}.{when}[{i}]"
                if isinstance(term, Mapping) and "podAffinityTerm" in term:
                    term, p = term["podAffinityTerm"], f"{p}.podAffinityTerm"
                if isinstance(term, Mapping):
                    # Unset (or an empty list of names) means the pod's own namespace.
                    found += [f"{p}.{k}" for k in ("namespaces", "namespaceSelector")
                              if term.get(k) not in (None, [])]
    return found


def check_pod_template(template: PodTemplate, allow: Collection[str] = frozenset()) -> None:
    """Refuse what the operator's policy keeps out of trial pods (SpecError naming the first such
    field): `allow` holds the POD_TEMPLATE_ALLOWANCES a cluster administrator granted."""
    path = "spec.trainer.podTemplate"

    def need(name: str, where: str) -> None:
        if name not in allow:
            raise _err(where, "not allowed by the operator's policy (the cluster administrator "
                              f"can allow it: --allow-pod-template={name}, Helm value "
                              "sweepPolicy.allowPodTemplate)")

    for key, value in (("serviceAccountName", template.service_account_name),
                       ("runtimeClassName", template.runtime_class_name),
                       ("priorityClassName", template.priority_class_name),
                       ("imagePullSecrets", template.image_pull_secrets)):
        if value:
            need(key, f"{path}.{key}")
    for i, volume in enumerate(template.volumes):
        for source in volume:
            where = f"{path}.volumes[{i}].{source}"
            if source == "name" or source in SAFE_VOLUME_SOURCES:
                continue
            if source not in VOLUME_SOURCES:
                raise _err(where, "not a volume source the operator knows")
            need(source, where)
    for i, toleration in enumerate(template.tolerations):
        key = toleration.get("key") or ""
        if key in CONTROL_PLANE_TAINTS:
            need("anyToleration", f"{path}.tolerations[{i}].key")
        elif not key and toleration.get("operator") == "Exists":
            need("anyToleration", f"{path}.tolerations[{i}].operator")
    for where in _cross_namespace_terms(template.affinity, f"{path}.affinity"):
        need("crossNamespaceAffinity", where)
    for kind, keys in (("labels", template.labels), ("annotations", template.annotations)):
        for key in keys:
            where = f"{path}.{kind}[{key!r}]"
            rule = _reserved(key, annotation=kind == "annotations")
            if rule == _OWN:
                raise _err(where, "reserved for the operator's own bookkeeping")
            if rule:
                need(rule, where)


def _url_under(url: str, prefix: str) -> bool:
    """Whether `url` is on `prefix`'s scheme, host and port, at or below its path."""
    try:
        u, p = urlsplit(url), urlsplit(prefix)
        ports = {"http": 80, "https": 443}
        u_port, p_port = u.port or ports.get(u.scheme), p.port or ports.get(p.scheme)
    except ValueError:
        return False
    if u.username is not None or not u.hostname or "\\" in url:
        return False
    if (u.scheme, u.hostname, u_port) != (p.scheme, p.hostname, p_port):
        return False
    if {".", ".."} & set(unquote(u.path).split("/")):
        return False
    base = p.path.rstrip("/")
    return u.path == base or u.path.startswith(base + "/")


def check_prometheus_url(url: str, allowed: Sequence[str] = (), default: str | None = None,
                         ) -> None:
    """Refuse a sweep's Prometheus URL unless it is the operator's own (`default`) or under one
    of the `allowed` prefixes: the operator, not the sweep's author, sends the requests."""
    if default and url.rstrip("/") == default.rstrip("/"):
        return
    if any(_url_under(url, prefix) for prefix in allowed):
        return
    raise _err("spec.metrics.prometheusURL", "not allowed by the operator's policy: it queries "
               "only its own Prometheus and the URLs the cluster administrator lists "
               "(--allow-prometheus-url, Helm value sweepPolicy.allowPrometheusURLs)")


def optimizer_defaults(model: str, name: str) -> tuple[OptimizerSide, OptimizerSide]:
    """The trainer's defaults for (model, optimizer): the paper's where it has them.

    For RMSProp, beta1 is the momentum and beta2 the smoothing constant.
    """
    lr_g, lr_d = PAPER_LEARNING_RATES[(model, name)]
    if name == "rmsprop":
        beta1, beta2, eps = 0.0, 0.99, 1e-8
    elif model == "biggan":
        beta1, beta2, eps = 0.0, 0.999, 1e-6
    else:
        beta1, beta2 = 0.5, 0.999
        eps = 1e-16 if name == "adabelief" else 1e-8
    return (OptimizerSide(lr_g, beta1, beta2, eps), OptimizerSide(lr_d, beta1, beta2, eps))


def _parse_optimizer(raw: Any, model: str) -> Optimizer:
    path = "spec.optimizer"
    o = _mapping(raw, path, default={})
    _no_unknown(o, path, ("name", "generator", "discriminator"))
    name = _str(o, "name", path, default="adam", choices=OPTIMIZERS)
    defaults = optimizer_defaults(model, name)
    sides = []
    for i, side in enumerate(("generator", "discriminator")):
        sp = f"{path}.{side}"
        s = _mapping(o.get(side), sp, default={})
        _no_unknown(s, sp, ("learningRate", "beta1", "beta2", "eps"))
        lr = _num(s, "learningRate", sp, gt=0, le=1)
        beta1 = _num(s, "beta1", sp, ge=0, lt=1)
        beta2 = _num(s, "beta2", sp, ge=0, lt=1)
        eps = _num(s, "eps", sp, gt=0, le=1)
        fallback = defaults[i]
        sides.append(OptimizerSide(
            lr if lr is not None else fallback.learning_rate,
            beta1 if beta1 is not None else fallback.beta1,
            beta2 if beta2 is not None else fallback.beta2,
            eps if eps is not None else fallback.eps,
        ))
    return Optimizer(name, sides[0], sides[1])


def _parse_batch_sizes(spec: Mapping[str, Any]) -> tuple[int, ...]:
    has_list = spec.get("batchSizes") is not None
    has_range = spec.get("batchSizeRange") is not None
    if has_list == has_range:
        raise _err("spec.batchSizes", "set exactly one of spec.batchSizes and spec.batchSizeRange")
    if has_list:
        raw = spec["batchSizes"]
        if not isinstance(raw, list) or not raw:
            raise _err("spec.batchSizes", "must be a non-empty list of integers")
        if len(raw) > 64:
            raise _err("spec.batchSizes", f"at most 64 batch sizes, got {len(raw)}")
        seen: set[int] = set()
        for i, v in enumerate(raw):
            p = f"spec.batchSizes[{i}]"
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or int(v) != v:
                raise _err(p, f"must be an integer, got {v!r}")
            if v <= 0:
                raise _err(p, f"must be positive, got {v}")
            if v > MAX_BATCH:
                raise _err(p, f"must be <= {MAX_BATCH}, got {v}")
            if int(v) in seen:
                raise _err(p, f"duplicate batch size {int(v)}")
            seen.add(int(v))
        return tuple(int(v) for v in raw)
    path = "spec.batchSizeRange"
    r = _mapping(spec["batchSizeRange"], path)
    _no_unknown(r, path, ("min", "max", "factor"))
    lo = _int(r, "min", path, required=True, lo=1, hi=MAX_BATCH)
    hi = _int(r, "max", path, required=True, lo=1, hi=MAX_BATCH)
    factor = _int(r, "factor", path, default=2, lo=2, hi=16)
    if lo > hi:
        raise _err(f"{path}.max", f"must be >= min ({lo}), got {hi}")
    out = []
    b = lo
    while b <= hi:
        out.append(b)
        b *= factor
    if len(out) > 64:
        raise _err(path, f"at most 64 batch sizes, got {len(out)}")
    return tuple(out)


def _parse_target(raw: Any) -> Target:
    path = "spec.target"
    t = _mapping(raw, path)
    _no_unknown(t, path, ("fidThreshold", "evalEvery", "evalSamples", "maxSteps"))
    target = Target(
        fid_threshold=_num(t, "fidThreshold", path, required=True, gt=0),
        max_steps=_int(t, "maxSteps", path, required=True, lo=1),
        eval_every=_int(t, "evalEvery", path, lo=1),
        eval_samples=_int(t, "evalSamples", path, lo=2, hi=1_000_000),
    )
    if target.eval_every is not None and target.eval_every > target.max_steps:
        raise _err(f"{path}.evalEvery",
                   f"must not exceed spec.target.maxSteps ({target.max_steps}), "
                   f"got {target.eval_every}")
    return target


def _parse_strategy(raw: Any, trials: int) -> Strategy:
    path = "spec.strategy"
    s = _mapping(raw, path, default={})
    _no_unknown(s, path, ("type", "confidence", "maxTrials"))
    kind = StrategyType(_str(s, "type", path, default="grid", choices=tuple(StrategyType)))
    confidence = _num(s, "confidence", path, gt=0.5, lt=1)
    max_trials = _int(s, "maxTrials", path, lo=1, hi=4096)
    if max_trials is not None and kind is not StrategyType.adaptive:
        raise _err(f"{path}.maxTrials", "only with type adaptive (a grid runs every trial)")
    return Strategy(
        type=kind,
        confidence=DEFAULT_CONFIDENCE[kind] if confidence is None else confidence,
        max_trials=None if max_trials is None else min(max_trials, trials),
    )


def _parse_estimate(raw: Any, model: str) -> tuple[EstimateTarget, ...]:
    path = "spec.estimate"
    e = _mapping(raw, path, default={})
    _no_unknown(e, path, ("targets",))
    targets = _list(e.get("targets"), f"{path}.targets")
    if len(targets) > 32:
        raise _err(f"{path}.targets", f"at most 32 targets, got {len(targets)}")
    out = []
    for i, item in enumerate(targets):
        p = f"{path}.targets[{i}]"
        t = _mapping(item, p)
        _no_unknown(t, p, ("name", "optimizer", "learningRate", "beta1", "beta2", "datasetSize",
                           "generatorParams"))
        opt = _str(t, "optimizer", p, required=True, choices=OPTIMIZERS)
        beta1 = _num(t, "beta1", p, ge=0, lt=1)
        g = optimizer_defaults(model, opt)[0]
        beta2 = _num(t, "beta2", p, ge=0, lt=1)
        target = EstimateTarget(
            optimizer=opt,
            learning_rate=_num(t, "learningRate", p, required=True, gt=0, le=1),
            beta1=g.beta1 if beta1 is None else beta1,
            beta2=g.beta2 if beta2 is None else beta2,
            name=_str(t, "name", p, max_len=63),
            dataset_size=_int(t, "datasetSize", p, lo=1),
            generator_params=_int(t, "generatorParams", p, lo=1),
        )
        try:
            target.setting()
        except ScienceError as exc:
            raise _err(p, str(exc)) from None
        out.append(target)
    return tuple(out)


def _parse_reference(raw: Any) -> Reference | None:
    if raw is None:
        return None
    path = "spec.reference"
    r = _mapping(raw, path)
    _no_unknown(r, path, ("sweep", "noiseRatio", "generatorParams", "datasetSize"))
    ref = Reference(
        sweep=_str(r, "sweep", path, max_len=253),
        noise_ratio=_num(r, "noiseRatio", path, gt=0),
        generator_params=_int(r, "generatorParams", path, lo=1),
        dataset_size=_int(r, "datasetSize", path, lo=1),
    )
    if (ref.sweep is None) == (ref.noise_ratio is None):
        raise _err(path, "set exactly one of sweep and noiseRatio")
    if ref.sweep is not None and not _DNS1123_SUBDOMAIN.match(ref.sweep):
        raise _err(f"{path}.sweep", f"must be a sweep's name, got {ref.sweep!r}")
    return ref


def _parse_metrics(raw: Any) -> Metrics:
    path = "spec.metrics"
    m = _mapping(raw, path, default={})
    _no_unknown(m, path, ("source", "prometheusURL", "lingerSeconds"))
    url = _str(m, "prometheusURL", path, max_len=2048)
    if url is not None and not _URL.match(url):
        raise _err(f"{path}.prometheusURL", f"must be an http(s) URL, got {url!r}")
    return Metrics(
        source=_str(m, "source", path, default="auto", choices=METRIC_SOURCES),
        prometheus_url=url,
        linger_seconds=_int(m, "lingerSeconds", path, default=30, lo=0, hi=3600),
    )


def parse_sweep(manifest: Mapping[str, Any]) -> Sweep:
    """A full CriticalBatchSweep manifest (as loaded from YAML) as a validated `Sweep`."""
    if not isinstance(manifest, Mapping):
        raise SpecError(f"manifest: must be a mapping, got {type(manifest).__name__}")
    name, namespace, generation, uid = _metadata(manifest)
    if "spec" not in manifest:
        raise _err("spec", "required")
    spec = _mapping(manifest["spec"], "spec")
    _no_unknown(spec, "spec", (
        "trainer", "optimizer", "batchSizes", "batchSizeRange", "seeds", "target",
        "parallelism", "trialsPerGPU", "pruning", "estimate", "reference", "metrics",
        "queueName", "strategy",
    ))
    trainer = _parse_trainer(spec.get("trainer") if "trainer" in spec else {})
    optimizer = _parse_optimizer(spec.get("optimizer"), trainer.model)
    batch_sizes = _parse_batch_sizes(spec)
    size = trainer.dataset.known_size
    if size is not None:
        for i, b in enumerate(batch_sizes):
            if b > size:
                field_path = ("spec.batchSizes" if spec.get("batchSizes") is not None
                              else "spec.batchSizeRange.max")
                raise _err(f"{field_path}[{i}]" if field_path == "spec.batchSizes" else field_path,
                           f"batch size {b} exceeds the {trainer.dataset.name} dataset's "
                           f"{size} training examples")
    pruning = _mapping(spec.get("pruning"), "spec.pruning", default={})
    _no_unknown(pruning, "spec.pruning", ("sfoBound",))
    sfo_bound = _bool(pruning, "sfoBound", "spec.pruning", default=True)
    per_gpu = _int(spec, "trialsPerGPU", "spec", default=1, lo=1, hi=MAX_TRIALS_PER_GPU)
    if per_gpu > 1 and trainer.gpus > 1:
        raise _err("spec.trialsPerGPU", f"must be 1 when spec.trainer.gpus is {trainer.gpus} "
                                        "(trials share one GPU)")
    queue = _str(spec, "queueName", "spec", max_len=63)
    if queue and not _DNS1123_SUBDOMAIN.match(queue):
        raise _err("spec.queueName", f"must be a LocalQueue's name, got {queue!r}")
    seeds = _int(spec, "seeds", "spec", default=1, lo=1, hi=32)
    return Sweep(
        name=name,
        namespace=namespace,
        generation=generation,
        uid=uid,
        trainer=trainer,
        optimizer=optimizer,
        batch_sizes=batch_sizes,
        seeds=seeds,
        target=_parse_target(spec.get("target")),
        parallelism=_int(spec, "parallelism", "spec", default=4, lo=1, hi=256),
        pruning=Pruning(sfo_bound),
        estimate=_parse_estimate(spec.get("estimate"), trainer.model),
        reference=_parse_reference(spec.get("reference")),
        metrics=_parse_metrics(spec.get("metrics")),
        queue_name=queue or None,
        trials_per_gpu=per_gpu,
        strategy=_parse_strategy(spec.get("strategy"), len(batch_sizes) * seeds),
    )


# ---------------------------------------------------------------------------------------------
# Derived settings
# ---------------------------------------------------------------------------------------------


def evaluation_interval(sweep: Sweep) -> int:
    """Steps between a trial's FID evaluations: a reached trial crossed the threshold within
    the last such interval."""
    return sweep.target.eval_every or default_eval_every(sweep.trainer.dataset.name)


def resume_checkpoint_every(sweep: Sweep) -> int:
    """The checkpoint period where a restart resumes: spec.trainer.checkpointEvery, else one
    checkpoint per FID evaluation (evalEvery, else 100), so a retry never starts over."""
    return sweep.trainer.checkpoint_every or sweep.target.eval_every or 100

"""Parsing `spec.trainer`: the model and its network, or the user's own command, the dataset,
Inception weights, checkpoints, resources, environment and pod template of every trial, and the
pods and worker processes of a data-parallel trial of the built-in trainer.

The model rules are the vocabulary's, so the spec refuses exactly what the trainer would. A
custom trainer (`command`) is told only the trial protocol's variables, so the built-in
trainer's fields are errors with it rather than settings silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from critbatch.protocol import ALL_VARS, MAX_PATH
from critbatch.spec.fields import (
    DNS1123_SUBDOMAIN,
    bool_field,
    check_known,
    field_error,
    int_field,
    list_field,
    mapping_field,
    str_field,
    str_map_field,
)
from critbatch.spec.model import CUSTOM, Checkpoints, Dataset, Inception, PodTemplate, Trainer
from critbatch.spec.policy import JOB_MOUNT_PATHS, JOB_VOLUMES
from critbatch.vocabulary import (
    DATASETS,
    DEVICES,
    EMA_MODELS,
    EMBEDDED_DATASETS,
    MODELS,
    attention_problem,
    default_image_size,
    image_size_problem,
    micro_batch_problem,
    recompute_problem,
    z_dim_problem,
)

_PATH = "spec.trainer"
_FIELDS = (
    "image", "imagePullPolicy", "command", "model", "imageSize", "channels", "dataset",
    "inception", "width", "zDim", "emaStart", "device", "gpus", "nodes", "processes",
    "resources", "checkpointEvery", "checkpoints", "backoffLimit",
    "activeDeadlineSeconds", "env", "podTemplate", "cudaGraph", "microBatch",
    "recomputeActivations", "fusedAttention", "bf16", "reproducibleCPU",
)
# Fields only the built-in trainer reads; with a command each is an error.
BUILTIN_ONLY = (
    "model", "imageSize", "channels", "width", "zDim", "emaStart", "inception", "device",
    "cudaGraph", "microBatch", "recomputeActivations", "fusedAttention", "bf16",
    "reproducibleCPU", "checkpointEvery",
)
MAX_COMMAND_ARGS = 64
MAX_MICRO_BATCH = 1 << 20
MAX_NODES = 64
MAX_PROCESSES = 64
MAX_ENV_NAME = 256
_WITH_COMMAND = "applies only to the built-in trainer (spec.trainer.command is set)"
_DATA_PARALLEL_WITH_COMMAND = (
    "data-parallel trials are for the built-in trainer (spec.trainer.command is set); a custom "
    "trainer gets its spec.trainer.gpus and starts its own processes")


def parse_trainer(raw: Any) -> Trainer:
    path = _PATH
    t = mapping_field(raw, path)
    check_known(t, path, _FIELDS)
    command = _parse_command(t.get("command"))
    if command:
        return _parse_custom(t, command)
    model = str_field(t, "model", path, default="dcgan", choices=MODELS)
    image_size = int_field(t, "imageSize", path, lo=8, hi=256)
    if image_size is not None and (problem := image_size_problem(model, image_size)):
        raise field_error(f"{path}.imageSize", f"{problem}, got {image_size}")
    channels = int_field(t, "channels", path)
    if channels is not None and channels not in (1, 3):
        raise field_error(f"{path}.channels", f"must be 1 or 3, got {channels}")
    dataset = _parse_dataset(t.get("dataset"))
    width, z_dim, ema_start = _parse_architecture(t, model, image_size, dataset.name)
    inception = _parse_inception(t.get("inception"))
    if inception is None and dataset.name not in EMBEDDED_DATASETS:
        raise field_error(f"{path}.inception",
                          f"required for the {dataset.name} dataset: FID on real images needs "
                          "Inception weights (pvc and file)")
    micro_batch = int_field(t, "microBatch", path, lo=1, hi=MAX_MICRO_BATCH)
    if micro_batch is not None and (problem := micro_batch_problem(model)):
        raise field_error(f"{path}.microBatch", problem)
    recompute = bool_field(t, "recomputeActivations", path)
    if recompute and (problem := recompute_problem(model)):
        raise field_error(f"{path}.recomputeActivations", problem)
    fused = bool_field(t, "fusedAttention", path)
    if fused and (problem := attention_problem(model)):
        raise field_error(f"{path}.fusedAttention", problem)
    pod = _pod_fields(t)
    trainer = Trainer(
        model=model,
        image_size=image_size,
        channels=channels,
        width=width,
        z_dim=z_dim,
        ema_start=ema_start,
        dataset=dataset,
        inception=inception,
        device=str_field(t, "device", path, default="auto", choices=DEVICES),
        checkpoint_every=int_field(t, "checkpointEvery", path, default=0, lo=0),
        cuda_graph=bool_field(t, "cudaGraph", path),
        micro_batch=micro_batch,
        recompute_activations=recompute,
        fused_attention=fused,
        bf16=bool_field(t, "bf16", path),
        reproducible_cpu=bool_field(t, "reproducibleCPU", path),
        **_parse_parallel(t, pod["gpus"]),
        **pod,
    )
    for key, value in (("cudaGraph", trainer.cuda_graph), ("microBatch", trainer.micro_batch),
                       ("recomputeActivations", trainer.recompute_activations)):
        if value and trainer.world_size > 1:
            raise field_error(f"{path}.{key}", "only for trials of one worker process, not "
                                               f"{trainer.world_size} (spec.trainer.nodes x "
                                               "processes per node)")
    return trainer


def _parse_command(raw: Any) -> tuple[str, ...]:
    """The program and its arguments, as exec takes them (never a shell string)."""
    path = f"{_PATH}.command"
    if raw is None:
        return ()
    args = list_field(raw, path)
    if not 1 <= len(args) <= MAX_COMMAND_ARGS:
        raise field_error(path, f"must hold 1 to {MAX_COMMAND_ARGS} strings (the program and "
                                f"its arguments), got {len(args)}")
    for i, arg in enumerate(args):
        p = f"{path}[{i}]"
        if not isinstance(arg, str):
            raise field_error(p, f"must be a string, got {arg!r}")
        if not arg or len(arg) > MAX_PATH or "\0" in arg:
            raise field_error(p, f"must be 1 to {MAX_PATH} characters without NUL")
    return tuple(args)


def _parse_custom(t: Mapping[str, Any], command: tuple[str, ...]) -> Trainer:
    """The trainer of a sweep that runs `command`: what any program's pod can use."""
    path = _PATH
    for key in BUILTIN_ONLY:
        if t.get(key) is not None:
            raise field_error(f"{path}.{key}", _WITH_COMMAND)
    if int_field(t, "nodes", path, default=1, lo=1, hi=MAX_NODES) != 1:
        raise field_error(f"{path}.nodes", _DATA_PARALLEL_WITH_COMMAND)
    if int_field(t, "processes", path, lo=1, hi=MAX_PROCESSES) is not None:
        raise field_error(f"{path}.processes", _DATA_PARALLEL_WITH_COMMAND)
    return Trainer(
        command=command,
        model=CUSTOM,
        dataset=_parse_dataset(t.get("dataset"), custom=True),
        **_pod_fields(t),
    )


def _parse_parallel(t: Mapping[str, Any], gpus: int) -> dict[str, Any]:
    """A data-parallel trial's pods (`nodes`) and worker processes per pod: one per GPU, which
    is what the launcher gives each process, so another count on GPUs is refused."""
    path = _PATH
    nodes = int_field(t, "nodes", path, default=1, lo=1, hi=MAX_NODES)
    processes = int_field(t, "processes", path, lo=1, hi=MAX_PROCESSES)
    if processes is not None and gpus >= 1 and processes != gpus:
        raise field_error(f"{path}.processes", f"must equal spec.trainer.gpus ({gpus}) when "
                                               "GPUs are asked for (one worker process per "
                                               f"GPU), got {processes}")
    return {"nodes": nodes, "processes": processes}


def _pod_fields(t: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a trial's pod and Job, the same for any trainer."""
    path = _PATH
    image = str_field(t, "image", path)
    if image is not None and not image.strip():
        raise field_error(f"{path}.image", "must not be empty")
    return {
        "image": image,
        "image_pull_policy": str_field(t, "imagePullPolicy", path,
                                       choices=("Always", "IfNotPresent", "Never")),
        "gpus": int_field(t, "gpus", path, default=1, lo=0, hi=16),
        "resources": _parse_resources(t.get("resources")),
        "checkpoints": _parse_checkpoints(t.get("checkpoints")),
        "backoff_limit": int_field(t, "backoffLimit", path, default=2, lo=0, hi=20),
        "active_deadline_seconds": int_field(t, "activeDeadlineSeconds", path, lo=1),
        "env": _parse_env(t.get("env")),
        "pod_template": _parse_pod_template(t.get("podTemplate")),
    }


def _parse_dataset(raw: Any, *, custom: bool = False) -> Dataset:
    path = f"{_PATH}.dataset"
    d = mapping_field(raw, path, default={})
    check_known(d, path, ("name", "path", "pvc", "size"))
    if custom and d.get("name") is not None:
        raise field_error(f"{path}.name", f"{_WITH_COMMAND}; the custom trainer's data is its "
                                          "own (path, pvc and size apply)")
    dataset = Dataset(
        name=CUSTOM if custom else str_field(d, "name", path, default="digits", choices=DATASETS),
        path=str_field(d, "path", path, max_len=MAX_PATH),
        pvc=str_field(d, "pvc", path, max_len=253),
        size=int_field(d, "size", path, lo=1),
    )
    for key in ("path", "pvc"):
        if getattr(dataset, key) == "":
            raise field_error(f"{path}.{key}", "must not be empty")
    if not custom and dataset.name not in EMBEDDED_DATASETS and not (dataset.path or dataset.pvc):
        raise field_error(path, f"the {dataset.name} dataset needs a path or a pvc")
    return dataset


def _parse_architecture(
    t: Mapping[str, Any], model: str, image_size: int | None, dataset: str,
) -> tuple[int | None, int | None, int | None]:
    """(width, zDim, emaStart); width and zDim set Θ, on which every Proposition 3.4 number
    depends (docs/science.md)."""
    width = int_field(t, "width", _PATH, lo=1, hi=512)
    z_dim = int_field(t, "zDim", _PATH, lo=1, hi=1024)
    ema_start = int_field(t, "emaStart", _PATH, lo=0)
    if z_dim is not None:
        size = image_size or default_image_size(model, dataset)
        if problem := z_dim_problem(model, size, z_dim):
            raise field_error(f"{_PATH}.zDim", f"{problem}, got {z_dim}")
    if ema_start is not None and model not in EMA_MODELS:
        raise field_error(f"{_PATH}.emaStart", f"only {' and '.join(EMA_MODELS)} keeps an EMA "
                                               f"of its generator, not {model}")
    return width, z_dim, ema_start


def _parse_inception(raw: Any) -> Inception | None:
    if raw is None:
        return None
    path = f"{_PATH}.inception"
    i = mapping_field(raw, path)
    check_known(i, path, ("pvc", "file"))
    inception = Inception(str_field(i, "pvc", path, max_len=253),
                          str_field(i, "file", path, required=True))
    if inception.pvc == "" or not inception.file:
        raise field_error(path, "pvc and file must not be empty")
    if inception.pvc and (inception.file.startswith("/") or ".." in inception.file.split("/")):
        raise field_error(f"{path}.file", "with a pvc, must be a path relative to the volume's "
                                          "root")
    if not inception.pvc and not inception.file.startswith("/"):
        raise field_error(f"{path}.file", "without a pvc, must be an absolute path")
    return inception


def _parse_checkpoints(raw: Any) -> Checkpoints | None:
    if raw is None:
        return None
    path = f"{_PATH}.checkpoints"
    c = mapping_field(raw, path)
    check_known(c, path, ("pvc",))
    pvc = str_field(c, "pvc", path, required=True)
    if len(pvc) > 253 or not DNS1123_SUBDOMAIN.match(pvc):
        raise field_error(f"{path}.pvc", "must be a PersistentVolumeClaim's name "
                                         f"(a DNS-1123 subdomain), got {pvc!r}")
    return Checkpoints(pvc)


def _parse_resources(raw: Any) -> dict[str, dict[str, str | int]]:
    path = f"{_PATH}.resources"
    r = mapping_field(raw, path, default={})
    check_known(r, path, ("requests", "limits"))
    resources: dict[str, dict[str, str | int]] = {}
    for kind in ("requests", "limits"):
        entries = mapping_field(r.get(kind), f"{path}.{kind}", default={})
        for k, v in entries.items():
            if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
                raise field_error(f"{path}.{kind}.{k}", f"must be a quantity, got {v!r}")
        if entries:
            resources[kind] = entries
    return resources


def _parse_env(raw: Any) -> tuple[tuple[str, str], ...]:
    env = []
    for i, item in enumerate(list_field(raw, f"{_PATH}.env")):
        path = f"{_PATH}.env[{i}]"
        e = mapping_field(item, path)
        check_known(e, path, ("name", "value"))
        name = str_field(e, "name", path, required=True, max_len=MAX_ENV_NAME)
        if not name:
            raise field_error(f"{path}.name", "must not be empty")
        if name in ALL_VARS:
            raise field_error(f"{path}.name", f"{name} is the trial protocol's own variable, "
                                              "which critbatch sets for every trial")
        env.append((name, str_field(e, "value", path, default="")))
    return tuple(env)


def _parse_pod_template(raw: Any) -> PodTemplate:
    path = f"{_PATH}.podTemplate"
    p = mapping_field(raw, path, default={})
    check_known(p, path, (
        "labels", "annotations", "nodeSelector", "tolerations", "affinity", "priorityClassName",
        "runtimeClassName", "serviceAccountName", "imagePullSecrets", "volumes", "volumeMounts",
    ))

    def objects(key: str) -> tuple[dict, ...]:
        return tuple(mapping_field(v, f"{path}.{key}[{i}]")
                     for i, v in enumerate(list_field(p.get(key), f"{path}.{key}")))

    secrets = [str_field(s, "name", f"{path}.imagePullSecrets[{i}]", required=True)
               for i, s in enumerate(objects("imagePullSecrets"))]
    for i, m in enumerate(objects("volumeMounts")):
        mp = f"{path}.volumeMounts[{i}]"
        str_field(m, "name", mp, required=True)
        mount = str_field(m, "mountPath", mp, required=True).rstrip("/") or "/"
        if mount in JOB_MOUNT_PATHS:
            raise field_error(f"{mp}.mountPath", f"{mount} is the trial's own; mount elsewhere")
    for i, v in enumerate(objects("volumes")):
        name = str_field(v, "name", f"{path}.volumes[{i}]", required=True)
        if name in JOB_VOLUMES:
            raise field_error(f"{path}.volumes[{i}].name", f"{name!r} is a volume the trial Job "
                                                           "already has; choose another name")
    affinity = p.get("affinity")
    return PodTemplate(
        labels=str_map_field(p.get("labels"), f"{path}.labels"),
        annotations=str_map_field(p.get("annotations"), f"{path}.annotations"),
        node_selector=str_map_field(p.get("nodeSelector"), f"{path}.nodeSelector"),
        tolerations=objects("tolerations"),
        affinity=mapping_field(affinity, f"{path}.affinity") if affinity is not None else None,
        priority_class_name=str_field(p, "priorityClassName", path),
        runtime_class_name=str_field(p, "runtimeClassName", path),
        service_account_name=str_field(p, "serviceAccountName", path),
        image_pull_secrets=tuple(secrets),
        volumes=objects("volumes"),
        volume_mounts=objects("volumeMounts"),
    )

"""Kubernetes manifests that run an envkit image the way envkit runs it on one host.

``plan`` checks every value a user gives (names, counts, label values, sizes, the command) and
returns a ``Workload``; ``manifest`` turns it into one Kubernetes object as plain data, and
``to_yaml`` / ``to_json`` write it out. Nothing here talks to a cluster or prints.

What carries over from ``envkit run`` and ``envkit verify``:

- the image by digest (``repo@sha256:…``) when this host pushed it (``envkit push`` remembers where),
  otherwise the local tag with ``imagePullPolicy: Never``, so that a node never pulls some other
  image of that name from Docker Hub;
- the image's non-root user (``runAsUser``), no privilege escalation, every capability dropped and
  the runtime's default seccomp profile: the Pod Security Standard "restricted";
- a memory-backed ``/dev/shm`` (an ``emptyDir`` of medium Memory with a size limit) for DataLoader
  workers and NCCL, instead of the host's IPC namespace;
- ``/workspace`` as the working directory;
- for ``torchrun``: one process per GPU (``--nproc-per-node`` equal to the GPU limit) and the
  environment of a single-node run.

Kubernetes has no per-container ulimits; the container runtime's limits apply (containerd's usual
systemd unit lifts ``memlock``, which NCCL needs, and its containers inherit that).

The verify Job runs in each pod what ``envkit verify`` runs in its container, from the scripts every
envkit image carries (``/opt/envkit/probe/``, copied there by the Dockerfile's final stage), one
container per stage: the probe and the single-process benchmark as init containers, then, with
more than one GPU, the benchmark under DDP over all of the pod's GPUs (torchrun) as the main
container. Each stage prints one JSON report line on stdout and exits non-zero when what it checked
is not sound, which stops the pod there and fails it; the container's name tags its report in
``kubectl logs --prefix``. No envkit CLI and no shell is needed in the image or on the node.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from envkit.engine.registry import known_locations, parse_reference
from envkit.errors import UsageError
from envkit.incontainer.probe import WORKLOADS

Kind = Literal["pod", "job", "verify"]
KINDS: tuple[str, ...] = ("pod", "job", "verify")

GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA GPU Feature Discovery puts on each GPU node, e.g. NVIDIA-H100-80GB-HBM3.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Where the Dockerfile's final stage copies the probe scripts (templates/partials/final.j2).
BAKED_PROBE_DIR = "/opt/envkit/probe"
PROBE_COMMAND: tuple[str, ...] = ("python", f"{BAKED_PROBE_DIR}/probe.py")
BENCH_COMMAND: tuple[str, ...] = ("python", f"{BAKED_PROBE_DIR}/bench.py")
# How envkit verify launches the benchmark under DDP (envkit/verify/runner.py, ScriptExecutor.run):
# this prefix, then --nproc_per_node=N, then the script and its arguments.
DDP_LAUNCHER: tuple[str, ...] = ("python", "-m", "torch.distributed.run", "--standalone")
# The benchmark's arguments as envkit verify gives them on GPUs by default (runner.bench_args:
# every workload, the builtin models, no compile rung, the script's own step count), and what its
# DDP run adds: the collective timeout, a third of verify's 1800 s stage timeout. Verify sits
# beside this package in the layers, so the values are repeated here; a unit test keeps them equal.
BENCH_IMPL = "builtin"
DDP_DIST_TIMEOUT = "600"
MAX_STEPS = 100_000
# What envkit verify puts in the environment of every stage, and of its DDP stage.
STAGE_ENV: tuple[tuple[str, str], ...] = (("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"))
DDP_ENV: tuple[tuple[str, str], ...] = (("GLOO_SOCKET_IFNAME", "lo"), ("NCCL_SOCKET_IFNAME", "lo"))
WORKDIR = "/workspace"
SHM_VOLUME = "dshm"
DEFAULT_SHM = "8Gi"  # what `envkit run` gives /dev/shm when it cannot ask the host
VERIFY_SHM = "2Gi"  # what `envkit verify` gives its container
MASTER_PORT = 29500  # torchrun's default
MAX_GPUS = 16  # per pod: the largest GPU nodes have 16
MAX_NODES = 1000
MAX_ARGS = 4096
MAX_COMMAND_BYTES = 256 * 1024
MAX_SHM_BYTES = 1024**4

# Labels on every object, and the label the verify Job's pods keep apart by.
PART_OF = ("app.kubernetes.io/part-of", "envkit")
NAME_LABEL = "app.kubernetes.io/name"
VERIFY_LABEL = "envkit.io/verify"
SOURCE_ANNOTATION = "envkit.io/source"
PINNED_ANNOTATION = "envkit.io/image-pinned"

_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # RFC 1123 label
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUANTITY_RE = re.compile(r"([1-9][0-9]{0,9})(Ki|Mi|Gi|Ti)")
_QUANTITY_SCALE = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# torchrun's options that take no value; every other option before the script takes one.
_TORCHRUN_FLAGS = frozenset({
    "--standalone", "--no-python", "--no_python", "--run-path", "--run_path", "-m", "--module",
    "--virtual-local-rank", "--virtual_local_rank",
})
_NPROC_OPTIONS = ("--nproc-per-node", "--nproc_per_node")
_NNODES_OPTIONS = ("--nnodes",)


class K8sUsageError(UsageError):
    """A value for a Kubernetes manifest that the cluster would refuse, or that would not run."""

    label = "bad kubernetes option"


@dataclass(frozen=True)
class ImageChoice:
    """What the manifest's ``image`` field names, and why."""

    reference: str
    pinned: bool  # by digest: every node runs the same bytes
    pull_policy: str  # IfNotPresent, or Never for a local tag no registry has
    note: str  # one line for the person, on stderr


@dataclass(frozen=True)
class Stage:
    """One container: its name (which tags its log lines), command and environment."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Workload:
    kind: Kind
    name: str
    source: str  # the catalog name or spec file it came from
    image: ImageChoice
    uid: int
    gpus: int
    # One after another: every stage but the last is an init container, the last is the main one.
    stages: tuple[Stage, ...]
    namespace: str | None = None
    runtime_class: str | None = None
    gpu_product: str | None = None
    shm_size: str = DEFAULT_SHM
    nodes: int = 1


# --- checking what the user gave ------------------------------------------------------------------


def check_label_name(value: str, what: str, *, max_length: int = 63) -> str:
    """An RFC 1123 label: lower-case letters, digits and '-', starting and ending alphanumeric."""
    if not value or len(value) > max_length or not _LABEL_RE.fullmatch(value):
        raise K8sUsageError(
            f"{what} {value!r} is not a Kubernetes name",
            hint=f"use at most {max_length} lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return value


def check_subdomain(value: str, what: str) -> str:
    """An RFC 1123 subdomain (runtime class names): dot-separated labels, at most 253 characters."""
    if not value or len(value) > 253 or not _SUBDOMAIN_RE.fullmatch(value):
        raise K8sUsageError(
            f"{what} {value!r} is not a Kubernetes name",
            hint="use lower-case letters, digits, '-' and '.', e.g. nvidia",
        )
    return value


def check_label_value(value: str, what: str) -> str:
    """A label value: at most 63 of letters, digits, '-', '_' and '.', alphanumeric at both ends."""
    if not value or len(value) > 63 or not _LABEL_VALUE_RE.fullmatch(value):
        raise K8sUsageError(
            f"{what} {value!r} is not a Kubernetes label value",
            hint="at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or "
            "digit, e.g. NVIDIA-H100-80GB-HBM3 (see `kubectl get nodes -L nvidia.com/gpu.product`)",
        )
    return value


def check_count(value: int, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise K8sUsageError(f"{what} {value!r}: expected a whole number from 1 to {maximum}")
    return value


def check_shm_size(value: str) -> str:
    """A Kubernetes quantity in binary units (``8Gi``, ``512Mi``), at most 1Ti."""
    match = _QUANTITY_RE.fullmatch(value)
    if match is None or int(match[1]) * _QUANTITY_SCALE[match[2]] > MAX_SHM_BYTES:
        raise K8sUsageError(
            f"--shm-size {value!r}: expected a size like 8Gi or 512Mi (Ki, Mi, Gi, Ti; at most 1Ti)"
        )
    return value


def check_command(command: tuple[str, ...]) -> tuple[str, ...]:
    """The command as a list of arguments: no control characters but tab and newline, bounded."""
    size = sum(len(arg.encode("utf-8", "replace")) for arg in command)
    if len(command) > MAX_ARGS or size > MAX_COMMAND_BYTES:
        raise K8sUsageError(f"the command is too long (at most {MAX_ARGS} arguments, 256 KiB)")
    for arg in command:
        bad = _CONTROL_RE.search(arg)
        if bad is not None:
            raise K8sUsageError(
                f"command argument {arg[:40]!r} holds the control character {bad.group()!r}"
            )
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise K8sUsageError(f"command argument {arg[:40]!r} is not valid UTF-8") from None
    return command


def check_workloads(value: str | None) -> tuple[str, ...]:
    """``--workload``: a comma-separated subset of the benchmark's workloads, as envkit verify takes it."""
    if value is None:
        return WORKLOADS
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [n for n in names if n not in WORKLOADS]
    if not names or unknown:
        raise K8sUsageError(
            f"--workload {value!r}: unknown workload {', '.join(unknown) or '(none given)'}",
            hint=f"use a comma-separated subset of {','.join(WORKLOADS)}",
        )
    return names


def default_name(source: str, kind: Kind) -> str:
    """``pytorch-cuda:2.8`` -> ``pytorch-cuda-2-8`` (``…-verify`` for the verify Job)."""
    suffix = "-verify" if kind == "verify" else ""
    stem = re.sub(r"[^a-z0-9]+", "-", posixpath.basename(source).lower()).strip("-") or "envkit"
    stem = stem.removesuffix("-yaml").removesuffix("-yml") or "envkit"
    return stem[: 63 - len(suffix) - 6].rstrip("-") + suffix


# --- the image ------------------------------------------------------------------------------------


def choose_image(local_tag: str, *, explicit: str | None, image_id: str | None, why_unknown: str | None
                 ) -> ImageChoice:
    """The image a cluster should run: ``explicit`` (``--image``) if given, else a registry location
    this host pushed ``image_id`` to, else the local tag (which only nodes that have it can run).

    ``why_unknown`` says why ``image_id`` is None (no engine answered, the image is not built).
    """
    if explicit is not None:
        ref = parse_reference(explicit, what="--image")
        if ref.digest:
            return ImageChoice(str(ref), True, "IfNotPresent", f"image {ref} (by digest, from --image)")
        return ImageChoice(
            str(ref), False, "IfNotPresent",
            f"--image {ref} names a tag, not a digest: nodes may pull different images under it; "
            "`envkit push` prints a repo@sha256:… location to use instead",
        )
    if image_id is not None:
        locations = known_locations(image_id)
        if locations:
            others = f" (also at {', '.join(locations[1:])})" if len(locations) > 1 else ""
            return ImageChoice(locations[0], True, "IfNotPresent",
                               f"image {locations[0]}: pushed from this host{others}")
        why_unknown = f"{local_tag} ({image_id[:19]}) was never pushed from this host"
    reason = why_unknown or f"no registry location is known for {local_tag}"
    return ImageChoice(
        local_tag, False, "Never",
        f"{reason}; the manifest names the local tag {local_tag} with imagePullPolicy Never, so only "
        "nodes that already have it can run it: `envkit push NAME REGISTRY/REPO` and run this again "
        "for an image by digest",
    )


# --- torchrun -------------------------------------------------------------------------------------


def _launcher_length(command: tuple[str, ...]) -> int:
    """How many leading arguments launch torchrun: 1 for ``torchrun``, 3 for ``python -m
    torch.distributed.run``, 0 when the command is not torchrun."""
    if not command:
        return 0
    program = posixpath.basename(command[0])
    if program == "torchrun":
        return 1
    if re.fullmatch(r"python(3(\.[0-9]+)?)?", program) and command[1:3] == ("-m", "torch.distributed.run"):
        return 3
    return 0


def _torchrun_options(command: tuple[str, ...], start: int) -> dict[str, tuple[int, str]]:
    """torchrun's options before the script: name -> (index of the option, value)."""
    found: dict[str, tuple[int, str]] = {}
    index = start
    while index < len(command):
        arg = command[index]
        if arg == "--" or not arg.startswith("-"):
            break  # the script (or, after -m, the module) starts here
        name, sep, value = arg.partition("=")
        if sep:
            found[name] = (index, value)
            index += 1
        elif arg in _TORCHRUN_FLAGS:
            found[arg] = (index, "")
            index += 1
        else:
            found[arg] = (index, command[index + 1] if index + 1 < len(command) else "")
            index += 2
    return found


def plan_torchrun(command: tuple[str, ...], gpus: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A torchrun command with one process per GPU, and the environment of a single-node run.

    ``--nproc-per-node`` is added when missing; one that differs from the GPU limit is refused, and
    so is more than one node (that needs a rendezvous service, which a single Job does not have).
    Any other command is returned as it is, with no environment.
    """
    start = _launcher_length(command)
    if not start:
        return command, ()
    options = _torchrun_options(command, start)
    for name in _NNODES_OPTIONS:
        if name in options and options[name][1] not in ("1", "1:1"):
            raise K8sUsageError(
                f"torchrun {name} {options[name][1]}: envkit k8s writes single-node workloads",
                hint="drop --nnodes, or run one Job per node with your own rendezvous endpoint",
            )
    nproc = [options[name][1] for name in _NPROC_OPTIONS if name in options]
    if not nproc:
        command = (*command[:start], f"--nproc-per-node={gpus}", *command[start:])
    elif nproc[0] not in ("gpu", "auto") and nproc[0] != str(gpus):
        raise K8sUsageError(
            f"torchrun --nproc-per-node {nproc[0]} does not match --gpus {gpus}",
            hint="one process per GPU: make them equal, or leave --nproc-per-node out and envkit adds it",
        )
    env = (
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(MASTER_PORT)),
        # torchrun sets 1 with a warning when unset; say it, so one process per GPU does not
        # oversubscribe the node's cores.
        ("OMP_NUM_THREADS", "1"),
        ("NCCL_DEBUG", "WARN"),
        # A collective that times out aborts the process (and the Job fails) instead of hanging.
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    )
    return command, env


# --- the verify stages ----------------------------------------------------------------------------


def bench_args(workloads: tuple[str, ...] = WORKLOADS, steps: int | None = None, *, ddp: bool = False
               ) -> tuple[str, ...]:
    """The benchmark's arguments, as envkit verify builds them for a GPU run (runner.bench_args)."""
    args: tuple[str, ...] = ("--workload", ",".join(workloads), "--impl", BENCH_IMPL)
    if steps:
        args += ("--steps", str(steps))
    if ddp:
        args += ("--dist-timeout", DDP_DIST_TIMEOUT)
    return args


def verify_stages(gpus: int, workloads: tuple[str, ...] = WORKLOADS, steps: int | None = None
                  ) -> tuple[Stage, ...]:
    """What envkit verify runs in its container, in its order: the probe (no arguments on a GPU),
    the benchmark in one process, and with more than one GPU the benchmark under DDP with one
    process per GPU. Every argument is a fixed string or a checked workload name or count."""
    stages = [
        Stage("probe", PROBE_COMMAND, STAGE_ENV),
        Stage("bench", (*BENCH_COMMAND, *bench_args(workloads, steps)), STAGE_ENV),
    ]
    if gpus > 1:
        command = (*DDP_LAUNCHER, f"--nproc_per_node={gpus}", *BENCH_COMMAND[1:],
                   *bench_args(workloads, steps, ddp=True))
        stages.append(Stage("bench-ddp", command, STAGE_ENV + DDP_ENV))
    return tuple(stages)


# --- the plan -------------------------------------------------------------------------------------


def plan(
    *,
    kind: str,
    source: str,
    uid: int,
    image: ImageChoice,
    gpus: int = 1,
    nodes: int | None = None,
    command: tuple[str, ...] = (),
    name: str | None = None,
    namespace: str | None = None,
    runtime_class: str | None = None,
    gpu_product: str | None = None,
    shm_size: str | None = None,
    workloads: str | None = None,
    steps: int | None = None,
) -> Workload:
    """Check every input and decide; raises K8sUsageError (exit 2) before anything is written."""
    if kind not in KINDS:
        raise K8sUsageError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    gpus = check_count(gpus, "--gpus", MAX_GPUS)
    command = check_command(tuple(command))
    if kind == "verify":
        if command:
            raise K8sUsageError(
                "--verify runs the image's probe and benchmark; it takes no command after NAME"
            )
        nodes = check_count(1 if nodes is None else nodes, "--nodes", MAX_NODES)
        if steps is not None:
            check_count(steps, "--steps", MAX_STEPS)
        stages = verify_stages(gpus, check_workloads(workloads), steps)
    else:
        if nodes is not None:
            raise K8sUsageError("--nodes is for --verify; a Pod or Job runs on one node")
        if workloads is not None or steps is not None:
            raise K8sUsageError("--workload and --steps are for --verify")
        if not command:
            raise K8sUsageError(
                "nothing to run: give a command after NAME and `--`",
                hint="e.g. envkit k8s pytorch-cuda:2.8 --gpus 8 -- torchrun train.py",
            )
        nodes = 1
        command, env = plan_torchrun(command, gpus)
        stages = (Stage("main", command, env),)
    if name is None:
        name = default_name(source, kind)  # type: ignore[arg-type]
    # The verify Job's pods are named NAME-INDEX-xxxxx with hostname NAME-INDEX: a label too.
    max_length = 63 - 1 - len(str(nodes - 1)) if kind == "verify" else 63
    check_label_name(name, "--name", max_length=max_length)
    if namespace is not None:
        check_label_name(namespace, "--namespace")
    if runtime_class is not None:
        check_subdomain(runtime_class, "--runtime-class")
    if gpu_product is not None:
        check_label_value(gpu_product, "--gpu-product")
    default_shm = VERIFY_SHM if kind == "verify" else DEFAULT_SHM
    shm = check_shm_size(shm_size) if shm_size is not None else default_shm
    return Workload(
        kind=kind,  # type: ignore[arg-type]
        name=name,
        source=source,
        image=image,
        uid=uid,
        gpus=gpus,
        stages=stages,
        namespace=namespace,
        runtime_class=runtime_class,
        gpu_product=gpu_product,
        shm_size=shm,
        nodes=nodes,
    )


# --- the manifest ---------------------------------------------------------------------------------


def literal_arg(arg: str) -> str:
    """``arg`` as the kubelet must pass it: it expands ``$(VAR)`` in command and args, and ``$$``
    stands for one ``$``, so every ``$`` is doubled and no argument is ever rewritten."""
    return arg.replace("$", "$$")


def _labels(workload: Workload) -> dict[str, str]:
    labels = {NAME_LABEL: workload.name, PART_OF[0]: PART_OF[1]}
    if workload.kind == "verify":
        labels[VERIFY_LABEL] = workload.name
    return labels


def _metadata(workload: Workload) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": workload.name}
    if workload.namespace is not None:
        metadata["namespace"] = workload.namespace
    metadata["labels"] = _labels(workload)
    metadata["annotations"] = {
        SOURCE_ANNOTATION: workload.source,
        PINNED_ANNOTATION: "true" if workload.image.pinned else "false",
    }
    return metadata


def _container(workload: Workload, stage: Stage) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": stage.name,
        "image": workload.image.reference,
        "imagePullPolicy": workload.image.pull_policy,
        "command": [literal_arg(arg) for arg in stage.command],
        "workingDir": WORKDIR,
    }
    if stage.env:
        container["env"] = [{"name": key, "value": value} for key, value in stage.env]
    container["resources"] = {"limits": {GPU_RESOURCE: str(workload.gpus)}}
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "runAsUser": workload.uid,
        "runAsGroup": workload.uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["volumeMounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    return container


def pod_spec(workload: Workload) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False}
    if workload.runtime_class is not None:
        spec["runtimeClassName"] = workload.runtime_class
    if workload.gpu_product is not None:
        spec["nodeSelector"] = {GPU_PRODUCT_LABEL: workload.gpu_product}
    if workload.kind == "verify":
        # One pod per node: N pods on N different GPU nodes.
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {VERIFY_LABEL: workload.name}},
            "topologyKey": HOSTNAME_LABEL,
        }]}}
    # GPU nodes are often tainted so that only pods asking for GPUs land there.
    spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": workload.uid,
        "runAsGroup": workload.uid,
        "fsGroup": workload.uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # Init containers run one at a time, in order, each only when the one before exited 0; the GPUs
    # the device plugin gives them are the ones the main container gets.
    *first, last = workload.stages
    if first:
        spec["initContainers"] = [_container(workload, stage) for stage in first]
    spec["containers"] = [_container(workload, last)]
    spec["volumes"] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": workload.shm_size}}]
    return spec


def manifest(workload: Workload) -> dict[str, Any]:
    """The Pod, Job or Indexed verify Job, as plain data (dicts, lists, strings, ints, bools)."""
    metadata = _metadata(workload)
    if workload.kind == "pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec(workload)}
    template = {"metadata": {"labels": _labels(workload)}, "spec": pod_spec(workload)}
    if workload.kind == "verify":
        # Each index fails on its own, without retries: a node that fails does not stop the others,
        # so every node leaves its reports, and the Job ends Failed when any index failed.
        job_spec: dict[str, Any] = {
            "backoffLimitPerIndex": 0,
            "completionMode": "Indexed",
            "completions": workload.nodes,
            "parallelism": workload.nodes,
        }
    else:
        job_spec = {"backoffLimit": 0}
    job_spec["template"] = template
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def gather_hint(workload: Workload) -> str:
    """How to collect the verify Job's reports once it has run: one JSON line per stage and node,
    each after ``[pod/NAME-INDEX-xxxxx/STAGE]``."""
    ns = f" -n {workload.namespace}" if workload.namespace else ""
    return (
        f"kubectl{ns} wait --for=condition=complete --timeout=60m job/{workload.name}; "
        f"kubectl{ns} logs -l job-name={workload.name} --all-containers --prefix --tail=-1 | grep -F '] {{'"
    )


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key (as kubectl writes them)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=4096)


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"

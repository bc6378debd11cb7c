"""``envkit k8s``: a Kubernetes Pod, Job or verify Job for a catalog image (envkit.cluster.k8s)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from envkit.errors import UsageError


def _image_id(local_tag: str) -> tuple[str | None, str | None]:
    """The local image's ID, or None and why not (no engine answers, the image is not built)."""
    import docker.errors  # noqa: PLC0415
    import requests.exceptions  # noqa: PLC0415

    from envkit.engine.client import find_image, get_client  # noqa: PLC0415
    from envkit.errors import EngineUnreachable  # noqa: PLC0415

    unknown = f"no Docker engine answers, so whether {local_tag} was pushed is unknown"
    try:
        client = get_client(timeout=15)
        attrs = find_image(client, local_tag)
    except EngineUnreachable:
        return None, unknown
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return None, f"the Docker engine did not say whether {local_tag} exists ({exc})"
    if attrs is None:
        return None, f"{local_tag} is not on this engine"
    return str(attrs["Id"]), None


@click.command("k8s")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--job", "as_job", is_flag=True, help="A batch/v1 Job that runs COMMAND once (the default).")
@click.option("--pod", "as_pod", is_flag=True, help="A bare Pod instead of a Job.")
@click.option("--verify", "as_verify", is_flag=True,
              help="An Indexed Job that runs envkit verify's probe and benchmark on --nodes GPU nodes, "
              "one JSON report per stage in each pod's log.")
@click.option("--gpus", type=int, metavar="N", default=1, show_default=True,
              help="GPUs per pod (nvidia.com/gpu); with --verify, N > 1 adds a DDP run.")
@click.option("--nodes", type=int, default=None, metavar="N",
              help="With --verify: how many GPU nodes, one pod each [default: 1].")
@click.option("--workload", "workloads", metavar="LIST",
              help="With --verify: comma-separated benchmark workloads [default: resnet50,yolo].")
@click.option("--steps", type=int, metavar="N", default=None,
              help="With --verify: timed benchmark steps per rung [default: the benchmark's].")
@click.option("--gpu-product", metavar="LABEL",
              help="Only nodes whose nvidia.com/gpu.product label is LABEL, e.g. NVIDIA-H100-80GB-HBM3.")
@click.option("--runtime-class", metavar="NAME", help="The pods' runtimeClassName, e.g. nvidia.")
@click.option("--shm-size", metavar="SIZE",
              help="Size limit of the memory-backed /dev/shm [default: 8Gi; 2Gi with --verify].")
@click.option("--name", "object_name", metavar="OBJECT",
              help="The object's name [default: from NAME, e.g. pytorch-cuda-2-8].")
@click.option("--namespace", metavar="NS", help="metadata.namespace [default: none, kubectl's current one].")
@click.option("--image", "image_ref", metavar="REF",
              help="Run REF (REGISTRY/REPO@sha256:...) instead of the location `envkit push` remembered.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (atomically) instead of stdout.")
def k8s_cmd(
    name: str,
    command: tuple[str, ...],
    as_job: bool,
    as_pod: bool,
    as_verify: bool,
    gpus: int,
    nodes: int | None,
    workloads: str | None,
    steps: int | None,
    gpu_product: str | None,
    runtime_class: str | None,
    shm_size: str | None,
    object_name: str | None,
    namespace: str | None,
    image_ref: str | None,
    as_json: bool,
    output: Path | None,
) -> None:
    """Print a Kubernetes Job (or Pod) that runs NAME the way envkit runs it; --verify checks GPU nodes.

    The image is named by digest when this host pushed it (`envkit push`), otherwise by its local
    tag, which stderr says. The pods run as the image's non-root user with no privilege escalation,
    a memory-backed /dev/shm and the GPUs asked for. Put COMMAND after `--`; its arguments are passed
    as a list, never through a shell, e.g. `envkit k8s NAME --gpus 8 -- torchrun train.py` (one
    process per GPU is added).
    """
    from envkit.cli import console  # noqa: PLC0415 - keeps `envkit --help` fast
    from envkit.cluster import k8s  # noqa: PLC0415
    from envkit.spec.catalog import load  # noqa: PLC0415

    if as_job + as_pod + as_verify > 1:
        raise UsageError("--job, --pod and --verify choose one kind of object; give one")
    kind = "verify" if as_verify else "pod" if as_pod else "job"
    spec = load(name).spec
    if image_ref is None:
        image_id, why = _image_id(spec.image_tag)
    else:
        image_id, why = None, None
    image = k8s.choose_image(spec.image_tag, explicit=image_ref, image_id=image_id, why_unknown=why)
    workload = k8s.plan(
        kind=kind, source=spec.ref, uid=spec.user.uid, image=image, gpus=gpus, nodes=nodes,
        command=command, name=object_name, namespace=namespace, runtime_class=runtime_class,
        gpu_product=gpu_product, shm_size=shm_size, workloads=workloads, steps=steps,
    )
    document = k8s.manifest(workload)
    text = k8s.to_json(document) if as_json else k8s.to_yaml(document)
    if output is not None:
        from envkit.atomic import write_text  # noqa: PLC0415

        write_text(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if image.pinned:
        console.info(image.note)
    else:
        console.warning(image.note)
    if kind == "verify":
        stages = ", ".join(stage.name for stage in workload.stages)
        console.info(f"each pod prints one JSON report line per stage ({stages}), after "
                     f"[pod/NAME-INDEX-xxxxx/STAGE] with --prefix; gather them with: "
                     f"{k8s.gather_hint(workload)}")
    if output is not None:
        console.success(f"wrote {workload.kind} {workload.name} to {output}")

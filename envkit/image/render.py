"""Spec + resolved versions -> Dockerfile text. Pure: no engine, no network, no files written.

Every choice (package lists, sorting, quoting, labels) is made here in Python so the templates
stay dumb; golden-file tests pin the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jinja2

from envkit import __version__
from envkit import labels as label_keys
from envkit.resources import templates_dir
from envkit.spec.model import ImageSpec

# Needed in every final image: the interpreter the venv points at, and public CA roots so users
# can fetch data over HTTPS at run time (the build's own CA bundle never gets here). torch.compile
# builds kernels against the Python headers: Inductor's CPU kernels are C++ (g++, with OpenMP from
# gcc's libgomp) and Triton's launchers on the GPU are C (gcc), so every image carries all three.
RUNTIME_PACKAGES_FMT = ("ca-certificates", "gcc", "g++", "lib{python}-dev")
# What people reach for first in an interactive image: a training repo is cloned, a job kept alive.
DEV_PACKAGES = ("git", "tmux")
# The builder only needs an interpreter with venv/ensurepip to bootstrap the pinned installer.
BUILDER_PACKAGES_FMT = ("{python}", "{python}-venv")


@dataclass(frozen=True)
class RenderInput:
    """Everything the template needs, already chosen, sorted and validated."""

    spec: ImageSpec
    source: str
    base_ref: str
    torch: str
    torchvision: str | None
    cuda: str
    cudnn: str | None
    nccl: str | None
    arch_list: tuple[str, ...]
    min_driver: str | None
    lock_digest: str | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)
    # From the lock: every package apt would install (dependencies too), pinned to one version.
    system_pins: dict[str, str] = field(default_factory=dict)
    builder_pins: dict[str, str] = field(default_factory=dict)
    # Names in the locked Python set: a venv's own pip or setuptools that the lock pins too is
    # removed from it, so the locked one is the only one.
    python_names: tuple[str, ...] = ()

    @property
    def python_bin(self) -> str:
        return f"python{self.spec.python}"


def _double_quoted(value: str) -> str:
    """A Dockerfile double-quoted string. Specs never let a quote, backslash or $ reach here."""
    return json.dumps(value, ensure_ascii=False)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dq"] = _double_quoted
    return env


def labels_for(data: RenderInput) -> dict[str, str]:
    spec = data.spec
    labels = {
        "org.opencontainers.image.title": spec.ref,
        "org.opencontainers.image.description": spec.description or f"PyTorch {data.torch}",
        "org.opencontainers.image.version": spec.tag,
        "org.opencontainers.image.vendor": "envkit",
        "org.opencontainers.image.base.name": data.base_ref,
        label_keys.NAME: spec.ref,
        label_keys.VARIANT: spec.variant,
        label_keys.SPEC_DIGEST: spec.digest(),
        label_keys.ENVKIT_VERSION: __version__,
        label_keys.PYTHON: spec.python,
        label_keys.TORCH: data.torch,
        label_keys.CUDA: data.cuda,
        label_keys.ARCH_LIST: ",".join(data.arch_list),
        label_keys.SOURCE_DATE_EPOCH: str(spec.source_date_epoch),
    }
    optional = {
        label_keys.TORCHVISION: data.torchvision,
        label_keys.CUDNN: data.cudnn,
        label_keys.NCCL: data.nccl,
        label_keys.MIN_DRIVER: data.min_driver,
        label_keys.LOCK_DIGEST: data.lock_digest,
    }
    labels.update({key: value for key, value in optional.items() if value})
    # The spec's own labels may add, never override what envkit records about the image.
    for key, value in spec.labels.items():
        labels.setdefault(key, value)
    labels.update(data.extra_labels)
    return dict(sorted(labels.items()))


def system_packages(data: RenderInput) -> list[str]:
    runtime = {item.format(python=data.python_bin) for item in RUNTIME_PACKAGES_FMT}
    dev = set(DEV_PACKAGES) if data.spec.variant == "dev" else set()
    return sorted({data.python_bin, *runtime, *dev, *data.spec.apt})


def builder_packages(data: RenderInput) -> list[str]:
    return sorted(item.format(python=data.python_bin) for item in BUILDER_PACKAGES_FMT)


def _pinned(requested: list[str], pins: dict[str, str]) -> list[str]:
    """With pins, install the whole pinned set as name=version; without, the requested names."""
    if not pins:
        return requested
    return [f"{name}={version}" for name, version in sorted(pins.items())]


def template_context(data: RenderInput, *, labels: bool = True) -> dict[str, Any]:
    spec = data.spec
    # The image also carries what makes its venv: the venv module and pip's wheel (the lock's
    # "builder" set, from when a separate stage made the environment).
    names = sorted(set(system_packages(data)) | set(builder_packages(data)))
    system = _pinned(names, {**data.builder_pins, **data.system_pins})
    require_cuda = "" if data.cuda == "cpu" else f"cuda>={data.cuda}"
    return {
        "envkit_version": __version__,
        "source": data.source,
        "image_ref": spec.ref,
        "variant": spec.variant,
        "base_ref": data.base_ref,
        "torch": data.torch,
        "cuda": data.cuda,
        "cudnn": data.cudnn,
        "python": spec.python,
        "python_bin": data.python_bin,
        "system_packages": system,
        "source_date_epoch": spec.source_date_epoch,
        "user": spec.user.name,
        "uid": spec.user.uid,
        "require_cuda": require_cuda,
        "env": sorted(spec.env.items()),
        "labels": list(labels_for(data).items()) if labels else [],
        "venv_remove": [name for name in ("pip", "setuptools") if name in data.python_names],
    }


def render_dockerfile(data: RenderInput) -> str:
    return _env().get_template("Dockerfile.j2").render(**template_context(data))


def system_recipe(data: RenderInput) -> str:
    """The Dockerfile's instructions without its comments and its LABEL: what decides the system
    part's layers and its config apart from the labels. Two specs that differ only in their name
    or their Python lock have one recipe, so the system part built for one serves the other."""
    text = _env().get_template("Dockerfile.j2").render(**template_context(data, labels=False))
    lines = (line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return "".join(line + "\n" for line in lines)

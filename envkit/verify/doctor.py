"""Can this host run each catalog image? Driver and GPU architecture against the compat data.

The host is read by ``envkit.host.gpu`` (NVML, then nvidia-smi), the reader `envkit verify`'s
preflight uses too, and the architecture rule is the one the in-container probe applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from envkit.host.gpu import HostGpus, arch_support, driver_at_least, read_host
from envkit.spec.compat import CPU, Resolved


@dataclass(frozen=True)
class Fit:
    image: str
    torch: str
    cuda: str
    min_driver: str | None
    arch_list: tuple[str, ...]
    runs: bool | None  # None: the data cannot tell (no recorded arch list or minimum driver)
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_list"] = list(self.arch_list)
        data["reasons"] = list(self.reasons)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class DoctorReport:
    host: HostGpus
    fits: list[Fit] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host.to_json(), "images": [f.to_json() for f in self.fits]}


# --------------------------------------------------------------------------- deciding


def assess(host: HostGpus, images: Iterable[tuple[str, Resolved]]) -> list[Fit]:
    fits = []
    for name, resolved in images:
        reasons: list[str] = []
        notes: list[str] = []
        unknown = False
        if resolved.cuda == CPU:
            fits.append(Fit(name, resolved.torch, resolved.cuda, None, (), True, (), ("CPU-only image",)))
            continue
        if not host.has_gpu:
            reasons.append("no NVIDIA GPU on this host")
        else:
            if resolved.min_driver is None:
                unknown = True
                notes.append(f"no minimum driver recorded for CUDA {resolved.cuda}")
            elif not driver_at_least(host.driver, resolved.min_driver):
                reasons.append(
                    f"driver {host.driver or 'unknown'} is older than {resolved.min_driver}, "
                    f"the minimum for CUDA {resolved.cuda}"
                )
            if not resolved.arch_list:
                unknown = True
                notes.append(
                    f"no GPU architecture list recorded for torch {resolved.torch}, CUDA {resolved.cuda}"
                )
            else:
                for gpu in host.gpus:
                    if gpu.sm is None:
                        unknown = True
                        notes.append(f"GPU {gpu.index}: compute capability unknown (driver too old)")
                        continue
                    ok, how = arch_support(gpu.sm, resolved.arch_list)
                    if not ok:
                        reasons.append(
                            f"GPU {gpu.index} {gpu.name} is {gpu.sm}, not in the image's architectures "
                            f"({' '.join(resolved.arch_list)}): 'no kernel image is available'"
                        )
                    elif how:
                        notes.append(f"GPU {gpu.index}: {how}")
        runs = False if reasons else (None if unknown else True)
        fits.append(
            Fit(
                name,
                resolved.torch,
                resolved.cuda,
                resolved.min_driver,
                resolved.arch_list,
                runs,
                tuple(reasons),
                tuple(dict.fromkeys(notes)),
            )
        )
    return fits


def catalog_images() -> list[tuple[str, Resolved]]:
    """Every catalog image with its resolved versions."""
    from envkit.spec import compat
    from envkit.spec.catalog import list_catalog_paths, load

    images = []
    for name, _ in list_catalog_paths():
        ref = load(name)
        spec = ref.spec
        resolved = compat.resolve(spec.torch.version, spec.torch.cuda, spec.python, source=ref.display)
        images.append((name, resolved))
    return images


def doctor(
    host: HostGpus | None = None, images: Iterable[tuple[str, Resolved]] | None = None
) -> DoctorReport:
    host = host if host is not None else read_host()
    return DoctorReport(host, assess(host, images if images is not None else catalog_images()))

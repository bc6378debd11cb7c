"""Make and check the lock beside each spec: Python wheels with hashes, the base, apt versions.

The Python set is resolved with uv for the image's platform and Python; the base is bootstrapped
(or taken by digest) and the apt packages are pinned by a dry run inside it, so a lock needs the
network and a Docker engine, while checking one needs neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import docker

from envkit.errors import IntegrityError
from envkit.events import Event, done, drain
from envkit.image.base import ensure_base
from envkit.image.build import BuildPlan, plan_build, resolve_spec, top_level_requirements
from envkit.image.render import builder_packages, system_packages
from envkit.lock import mirror
from envkit.lock import python as locks
from envkit.lock.apt import resolve_apt
from envkit.platforms import uv_platform
from envkit.spec.catalog import SpecRef, list_catalog_paths, load


def make_lock(
    client: docker.DockerClient, name: str, *, index_url: str | None = None
) -> tuple[BuildPlan, locks.LockFile]:
    return drain(lock_events(client, name, index_url=index_url))


def lock_events(client: docker.DockerClient, name: str, *, index_url: str | None = None) -> Iterator[Event]:
    """``make_lock`` as phase events; the last one carries (plan, written lock).

    ``index_url`` is a mirror (see envkit.lock.mirror); the lock records hashes, never where from.
    """
    plan = plan_build(name, with_requirements=False, use_lock=False)
    spec = plan.spec
    indexes = mirror.choose(
        cli_url=index_url, spec_url=spec.index_url, spec_extra=spec.extra_index_url,
        torch_index=plan.resolved.index_url,
    )
    where = f" from {mirror.redact(indexes.primary)}" if indexes.primary and indexes.mirrored else ""
    yield Event("phase", f"{spec.ref}: resolving the Python set with uv{where}")
    requirements = locks.lock_requirements(
        top_level_requirements(plan.ref, plan.resolved),
        python=spec.python,
        platform=uv_platform(spec.platform),
        index_url=indexes.primary,
        extra_index_urls=indexes.extra,
    )
    base: dict[str, str] = {"ref": plan.base_ref}
    if plan.base_plan is not None:
        yield Event("phase", f"{spec.ref}: base {plan.base_ref}")
        result = ensure_base(client, plan.base_plan)
        base.update(
            {
                "suite": plan.base_plan.bootstrap.suite,
                "mirror": plan.base_plan.bootstrap.mirror,
                "variant": plan.base_plan.bootstrap.variant,
                "image_id": result.image_id,
                "rootfs": result.rootfs_sha256,
            }
        )
    else:
        base["image_id"] = client.images.get(plan.base_ref).id
    yield Event("phase", f"{spec.ref}: pinning apt packages by a dry run in the base")
    pins = resolve_apt(
        client,
        plan.base_ref,
        {"system": system_packages(plan.render_input), "builder": builder_packages(plan.render_input)},
    )
    # What uv and apt answered goes through the same strict model as a lock read from disk.
    lock = locks.parse_lock(
        {
            "spec_digest": spec.digest(),
            "source_date_epoch": spec.source_date_epoch,
            "base": base,
            "apt": pins.get("system", {}),
            "builder_apt": pins.get("builder", {}),
            "python_requirements": requirements,
            "packages": locks.parse_locked(requirements),
        },
        f"the new lock of {spec.ref}",
    )
    locks.write_lock(plan.ref.lock_path, lock)
    yield done(f"wrote {plan.ref.lock_path}", (plan, lock))


@dataclass(frozen=True)
class LockStatus:
    name: str
    state: str  # "fresh", "stale", "missing"


def check_locks(names: list[str] | None = None) -> list[LockStatus]:
    statuses = []
    for name in names or [ref for ref, _ in list_catalog_paths()]:
        ref = load(name)
        if not ref.lock_path.is_file():
            statuses.append(LockStatus(name, "missing"))
            continue
        lock = locks.read_lock(ref.lock_path)  # every field against its grammar: exit 2 or 5
        if locks.is_stale(lock, ref.spec.digest()):
            statuses.append(LockStatus(name, "stale"))
            continue
        check_covers_spec(ref, lock)
        statuses.append(LockStatus(name, "fresh"))
    return statuses


def check_covers_spec(ref: SpecRef, lock: locks.LockFile) -> None:
    """A lock that names its spec's digest must also pin everything the spec asks for.

    The digest alone proves nothing: anyone can copy it into an edited lock. So every top-level
    requirement must be pinned (with its hashes, which the lock model already insists on) at a
    version the requirement allows, and every apt package of the spec must have its pin.
    """
    from packaging.requirements import Requirement

    where = str(ref.lock_path)
    for text in top_level_requirements(ref, resolve_spec(ref)):
        requirement = Requirement(text)
        name = locks.normalise_name(requirement.name)
        pinned = lock.packages.get(name)
        if pinned is None:
            raise IntegrityError(f"{where}: {text} from {ref.display} is not pinned in the lock")
        if not requirement.specifier.contains(pinned.version, prereleases=True):
            raise IntegrityError(
                f"{where}: {name} is pinned to {pinned.version}, which {ref.display} does not allow ({text})"
            )
    for entry in ref.spec.apt:
        package, _, version = entry.partition("=")
        if package not in lock.apt:
            raise IntegrityError(f"{where}: apt package {package} from {ref.display} has no pin in the lock")
        if version and lock.apt[package] != version:
            raise IntegrityError(
                f"{where}: apt package {package} is pinned to {lock.apt[package]}, "
                f"{ref.display} asks for {version}"
            )

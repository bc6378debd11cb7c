"""Pin apt packages: ask the base image itself which exact versions it would install.

A dry run (`apt-get install -s`) inside a throwaway container of the base lists every package it
would add, dependencies included, with its version. Installing exactly that list, each as
``name=version``, gives the same system layer until the mirror drops one of those versions,
and then a clear apt error instead of silently different packages.
"""

from __future__ import annotations

import re
import shlex
import uuid

import docker
import docker.errors

from envkit.errors import BuildFailed, NetworkError

_INST_RE = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")


def parse_dry_run(output: str) -> dict[str, str]:
    """``Inst libfoo1 (1.2-3 Debian:12.8/stable [amd64])`` lines -> {"libfoo1": "1.2-3"}."""
    pins: dict[str, str] = {}
    for line in output.splitlines():
        match = _INST_RE.match(line.strip())
        if match:
            name = match.group(1).split(":", 1)[0]  # drop a :arch qualifier
            pins[name] = match.group(2)
    return dict(sorted(pins.items()))


def _script(groups: dict[str, list[str]]) -> str:
    lines = ["set -euo pipefail", "apt-get update -qq >/dev/null"]
    for name, packages in groups.items():
        quoted = " ".join(shlex.quote(p) for p in packages)
        lines.append(f"echo '### {name}'")
        lines.append(f"apt-get install -s -qq --no-install-recommends {quoted}")
    return "\n".join(lines)


def resolve_apt(
    client: docker.DockerClient, base_ref: str, groups: dict[str, list[str]]
) -> dict[str, dict[str, str]]:
    """Run the dry runs in one container of ``base_ref``; returns pins per group."""
    name = f"envkit-aptlock-{uuid.uuid4().hex[:10]}"
    try:
        output = client.containers.run(
            base_ref,
            ["bash", "-c", _script(groups)],
            name=name,
            remove=True,
            stdout=True,
            stderr=True,
            user="0",
            environment={"DEBIAN_FRONTEND": "noninteractive"},
        ).decode("utf-8", "replace")
    except docker.errors.ContainerError as exc:
        text = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else str(exc)
        if "Temporary failure resolving" in text or "Could not resolve" in text or "Failed to fetch" in text:
            raise NetworkError(f"apt in {base_ref} could not reach its mirror", details=text) from None
        raise BuildFailed(f"apt could not resolve the packages in {base_ref}", details=text) from None
    result: dict[str, dict[str, str]] = {}
    for section in output.split("### ")[1:]:
        group, _, body = section.partition("\n")
        result[group.strip()] = parse_dry_run(body)
    return result

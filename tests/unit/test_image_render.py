"""Rendering is pure and pinned by golden files (ENVKIT_UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from envkit.image.build import plan_build
from envkit.image.render import labels_for

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
NO_CA: dict[str, str] = {}


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ENVKIT_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path.name}; run with ENVKIT_UPDATE_GOLDEN=1 once"
    assert text == path.read_text(), f"rendered Dockerfile differs from {path.name}"


@pytest.mark.parametrize("image", ["pytorch-cuda:2.6", "pytorch-cuda:2.7", "pytorch-cuda:2.8"])
def test_catalog_dockerfiles_match_golden_files(image: str) -> None:
    plan = plan_build(image, with_requirements=False, environ=NO_CA)
    _golden(image.replace(":", "-") + ".Dockerfile", plan.dockerfile)


def test_a_ca_bundle_reaches_neither_the_dockerfile_nor_the_build_context(tmp_path: Path) -> None:
    """The host fetches the wheels (with the CA); the engine build needs no TLS at all."""
    from envkit.image.build import make_context

    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nenvkit-test-ca\n")
    plan = plan_build("pytorch-cuda:2.8", ca_bundle=str(bundle), environ=NO_CA)
    assert "ca-bundle" not in plan.dockerfile and "SSL_CERT_FILE" not in plan.dockerfile
    assert "PIP_CERT" not in plan.dockerfile
    context = make_context(plan)
    assert not any(b"envkit-test-ca" in data for data in context.files.values())
    assert plan.index_args[-2:] == ["--cert", str(bundle)]  # the host's download trusts it
    # Proxy settings arrive as Docker's predefined build args: never declared, never set.
    assert not re.search(r"(?im)^(ARG|ENV)\b.*proxy", plan.dockerfile)


def test_dockerfile_hygiene() -> None:
    text = plan_build("pytorch-cuda:2.8", with_requirements=False, environ=NO_CA).dockerfile
    assert text.count('SHELL ["/bin/bash", "-o", "pipefail", "-c"]') == 1
    assert text.count("FROM ") == 1  # one stage: no builder keeps a copy of the environment
    for line in re.findall(r"apt-get install[^\n]*", text):
        assert "--no-install-recommends" in line
    assert text.count("rm -rf /var/lib/apt/lists/*") == 1
    assert "ADD " not in text
    # The last USER is the non-root default user and the final command is in JSON form.
    users = re.findall(r"(?m)^USER (.+)$", text)
    assert users[-1] == "1000:1000"
    assert text.rstrip().endswith('CMD ["python"]')
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=12.8"' in text
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text


def test_labels_carry_spec_digest_and_resolved_versions() -> None:
    plan = plan_build("pytorch-cuda:2.8", with_requirements=False, environ=NO_CA)
    labels = labels_for(plan.render_input)
    assert labels["io.envkit.spec-digest"] == plan.spec.digest()
    assert labels["io.envkit.torch"] == "2.8.0"
    assert labels["io.envkit.cuda"] == "12.8"
    assert labels["io.envkit.cudnn"] == plan.resolved.cudnn
    assert labels["org.opencontainers.image.title"] == "pytorch-cuda:2.8"
    assert list(labels) == sorted(labels)


def test_render_cli_works_without_an_engine(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.app import main

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["render", "pytorch-cuda:2.8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Rendered by envkit")
    assert "FROM envkit/debian:bookworm" in out

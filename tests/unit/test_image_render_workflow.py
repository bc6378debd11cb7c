"""What the rendered images give a person working in them: pip in a venv they own, login shells
with the image's PATH, a compiler for torch.compile, and the dev tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

from envkit.image.build import plan_build
from envkit.image.render import system_packages
from envkit.resources import templates_dir


def test_the_environment_has_pip_and_belongs_to_the_default_user() -> None:
    text = plan_build("pytorch-cuda:2.6", with_requirements=False, environ={}).dockerfile
    assert "RUN /usr/bin/python3.11 -m venv /opt/venv" in text  # ensurepip: pip comes with it
    assert "chown -R 1000:1000 /opt/venv" in text  # the Python layers are the user's too (pylayers)
    assert "python3.11-venv=" in text and "python3-pip-whl=" in text
    assert "COPY files/profile.sh /etc/profile.d/envkit.sh" in text
    assert "--shell /bin/bash" in text


def test_every_image_can_compile_and_dev_images_have_git_and_tmux() -> None:
    runtime = plan_build("pytorch-cuda:2.6", with_requirements=False, environ={}).render_input
    assert {"gcc", "libpython3.11-dev"} <= set(system_packages(runtime))
    assert not {"git", "tmux"} & set(system_packages(runtime))
    dev = plan_build("pytorch-cuda:2.6-dev", with_requirements=False, environ={}).render_input
    assert {"gcc", "libpython3.11-dev", "git", "tmux"} <= set(system_packages(dev))


def test_the_profile_script_gives_login_shells_the_venv_and_workspace(tmp_path: Path) -> None:
    script = templates_dir() / "files" / "profile.sh"
    home = tmp_path / "home"
    home.mkdir()
    # Debian's /etc/profile sets a PATH without the venv, then sources profile.d.
    result = subprocess.run(
        ["sh", "-c", f'cd "$HOME"; PATH=/usr/bin:/bin; . {script}; echo "$PATH|$VIRTUAL_ENV|$PWD"; '
         f'. {script}; echo "$PATH"'],
        capture_output=True, text=True, env={"HOME": str(home)}, check=True,
    )
    first, second = result.stdout.splitlines()
    path, venv, cwd = first.split("|")
    assert path == "/opt/venv/bin:/usr/bin:/bin" and venv == "/opt/venv"
    assert cwd == ("/workspace" if Path("/workspace").is_dir() else str(home))
    assert second == path  # sourcing twice adds nothing


def test_jupyter_terminals_are_bash_login_shells() -> None:
    config = (templates_dir() / "files" / "dev" / "jupyter_server_config.py").read_text()
    assert '"shell_command": ["/bin/bash", "--login"]' in config

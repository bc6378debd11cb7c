# System-wide Jupyter Server settings of envkit dev images.
#
# The token is never baked in: `envkit run` writes it into the container (0600, owned by the user)
# before the container starts, or the entrypoint makes a random one at start. A hashed password, when
# the user gives one, is read the same way. An empty token or a disabled XSRF check is never set.
import os

SECRETS = os.environ.get("ENVKIT_SECRETS_DIR", "/run/envkit")
TOKEN_FILE = os.path.join(SECRETS, "jupyter_token")
PASSWORD_FILE = os.path.join(SECRETS, "jupyter_password")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


c = get_config()  # noqa: F821 (provided by the config loader)

c.ServerApp.ip = "0.0.0.0"  # inside the container; envkit publishes it on loopback only
c.ServerApp.port = int(os.environ.get("ENVKIT_JUPYTER_PORT", "8888"))
c.ServerApp.open_browser = False
c.ServerApp.root_dir = os.environ.get("ENVKIT_WORKDIR", "/workspace")
c.ServerApp.disable_check_xsrf = False

token = _read(TOKEN_FILE) if os.path.isfile(TOKEN_FILE) else ""
if len(token) < 32:
    raise SystemExit(f"envkit: refusing to start Jupyter without a token of 32+ characters in {TOKEN_FILE}")
c.IdentityProvider.token = token
if os.path.isfile(PASSWORD_FILE):
    c.PasswordIdentityProvider.hashed_password = _read(PASSWORD_FILE)

# Jupyter's terminals are login shells in bash, so /etc/profile.d/envkit.sh gives them the image's
# PATH and VIRTUAL_ENV (Debian's /etc/profile would otherwise drop /opt/venv/bin).
c.ServerApp.terminado_settings = {"shell_command": ["/bin/bash", "--login"]}

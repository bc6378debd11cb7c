"""HEALTHCHECK of envkit dev images: every service named in ENVKIT_SERVICES answers locally."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request


def http_ok(port: int, path: str) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    if status != 200:
        raise RuntimeError(f"HTTP {status} on port {port}{path}")


def ssh_banner(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        banner = sock.recv(64)
    if not banner.startswith(b"SSH-2.0-"):
        raise RuntimeError(f"no SSH banner on port {port}")


CHECKS = {
    "jupyter": lambda: http_ok(int(os.environ.get("ENVKIT_JUPYTER_PORT", "8888")), "/api"),
    "tensorboard": lambda: http_ok(int(os.environ.get("ENVKIT_TENSORBOARD_PORT", "6006")), "/"),
    "ssh": lambda: ssh_banner(2222),
}


def main() -> int:
    failed = []
    for name in filter(None, os.environ.get("ENVKIT_SERVICES", "").split(",")):
        try:
            CHECKS[name]()
        except (OSError, RuntimeError, KeyError) as error:
            failed.append(f"{name}: {error}")
    for line in failed:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

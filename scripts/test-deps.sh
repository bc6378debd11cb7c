#!/usr/bin/env bash
# Host packages the tests drive as real clients and servers: an ssh client, an ssh server (verify
# --host reaches an engine over SSH on loopback), a headless browser and its driver, curl (dev
# services); Debian's docker-registry, htpasswd and openssl (the registry tests start their own
# registry with scripts/registry.sh). Safe to run again: it installs only
# what is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(openssh-client openssh-server chromium chromium-driver curl docker-registry apache2-utils openssl)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "test dependencies present: ${PACKAGES[*]}"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "installing ${missing[*]} needs root or sudo" >&2; exit 1; }
    SUDO=(sudo)
fi

echo "installing: ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Make sure a Docker engine answers on this host: install Debian's docker.io and mmdebstrap when
# missing, start dockerd in the background when nothing answers, and wait for it. Idempotent.
#
#   scripts/engine.sh            # default socket
#   ENVKIT_DOCKERD_ROOT=/var/lib/docker2 ENVKIT_DOCKER_SOCK=/run/docker2.sock scripts/engine.sh
#     starts a second engine with its own data-root (it stands in for a second machine).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sock="${ENVKIT_DOCKER_SOCK:-/var/run/docker.sock}"
data_root="${ENVKIT_DOCKERD_ROOT:-/var/lib/docker}"
exec_root="${ENVKIT_DOCKERD_EXEC_ROOT:-}"
log="${ENVKIT_DOCKERD_LOG:-/var/log/envkit-dockerd.log}"

install_missing engine.sh dockerd=docker.io mmdebstrap=mmdebstrap zstd=zstd

docker_cli=(docker -H "unix://$sock")
if "${docker_cli[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "engine.sh: engine answers on $sock ($("${docker_cli[@]}" version --format '{{.Server.Version}}'))" >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "engine.sh: no engine answers on $sock and starting dockerd needs root" >&2
  exit 3
fi

args=(--host "unix://$sock" --data-root "$data_root")
if [ -n "$exec_root" ]; then
  args+=(--exec-root "$exec_root" --pidfile "$exec_root/dockerd.pid")
fi
if [ "$sock" != /var/run/docker.sock ]; then
  # A second engine must not fight the first over docker0 or its iptables chains: give it a bridge
  # of its own on another subnet, with a NAT rule so its build containers still reach the mirrors.
  bridge="${ENVKIT_DOCKERD_BRIDGE:-envkit-br1}"
  subnet="${ENVKIT_DOCKERD_SUBNET:-172.31.250}"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  iptables -t nat -C POSTROUTING -s "$subnet.0/24" ! -o "$bridge" -j MASQUERADE 2>/dev/null \
    || iptables -t nat -A POSTROUTING -s "$subnet.0/24" ! -o "$bridge" -j MASQUERADE
  iptables -C FORWARD -i "$bridge" -j ACCEPT 2>/dev/null || iptables -I FORWARD -i "$bridge" -j ACCEPT
  iptables -C FORWARD -o "$bridge" -j ACCEPT 2>/dev/null || iptables -I FORWARD -o "$bridge" -j ACCEPT
  args+=(--bridge "$bridge" --iptables=false --ip-masq=false)
fi
echo "engine.sh: starting dockerd on $sock (data-root $data_root, log $log)" >&2
nohup dockerd "${args[@]}" >>"$log" 2>&1 </dev/null &

for _ in $(seq 1 60); do
  if "${docker_cli[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "engine.sh: engine up on $sock ($("${docker_cli[@]}" version --format '{{.Server.Version}}'))" >&2
    exit 0
  fi
  sleep 1
done
echo "engine.sh: dockerd did not answer within 60 s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 3

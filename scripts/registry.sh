#!/usr/bin/env bash
# Start or stop a private image registry (Debian's docker-registry, the CNCF distribution
# registry) whose config, storage, log and pid file all live in one directory. Tests and the
# registry benchmark use it; so can anyone who wants a registry on a machine with no network.
#
#   scripts/registry.sh start DIR [ADDR:PORT]   # default 127.0.0.1:5000, plain HTTP
#   scripts/registry.sh stop DIR
#
# Options for start, from the environment:
#   ENVKIT_REGISTRY_TLS_CERT, ENVKIT_REGISTRY_TLS_KEY   serve HTTPS with this certificate and key
#   ENVKIT_REGISTRY_HTPASSWD                            require these users (an htpasswd file, bcrypt)
# An engine trusts 127.0.0.0/8 over plain HTTP by default; any other address needs TLS with a CA
# the engine trusts (/etc/docker/certs.d/ADDR:PORT/ca.crt), or `--insecure-registry` on dockerd.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 start DIR [ADDR:PORT] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action="$1"
dir="$2"
pid_file="$dir/registry.pid"

stop() {
  if [ -f "$pid_file" ]; then
    pid="$(cat "$pid_file")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pid_file"
  fi
}

case "$action" in
  stop) stop; exit 0 ;;
  start) ;;
  *) usage ;;
esac

addr="${3:-127.0.0.1:5000}"
install_missing registry.sh docker-registry=docker-registry curl=curl

mkdir -p "$dir/storage"
stop
config="$dir/config.yml"
{
  echo "version: 0.1"
  echo "log:"
  echo "  level: info"
  echo "storage:"
  echo "  filesystem:"
  echo "    rootdirectory: $dir/storage"
  echo "  delete:"
  echo "    enabled: true"
  echo "http:"
  echo "  addr: $addr"
  echo "  secret: envkit-test-registry-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
  if [ -n "${ENVKIT_REGISTRY_TLS_CERT:-}" ]; then
    echo "  tls:"
    echo "    certificate: $ENVKIT_REGISTRY_TLS_CERT"
    echo "    key: ${ENVKIT_REGISTRY_TLS_KEY:?ENVKIT_REGISTRY_TLS_KEY goes with ENVKIT_REGISTRY_TLS_CERT}"
  fi
  if [ -n "${ENVKIT_REGISTRY_HTPASSWD:-}" ]; then
    echo "auth:"
    echo "  htpasswd:"
    echo "    realm: envkit-registry"
    echo "    path: $ENVKIT_REGISTRY_HTPASSWD"
  fi
} >"$config"

nohup docker-registry serve "$config" >>"$dir/registry.log" 2>&1 </dev/null &
echo $! >"$pid_file"

scheme=http
curl_args=(-s -o /dev/null -w '%{http_code}')
if [ -n "${ENVKIT_REGISTRY_TLS_CERT:-}" ]; then
  scheme=https
  curl_args+=(-k)
fi
for _ in $(seq 1 100); do
  code="$(curl "${curl_args[@]}" "$scheme://$addr/v2/" || true)"
  if [ "$code" = 200 ] || [ "$code" = 401 ]; then
    echo "registry.sh: registry up at $scheme://$addr (storage $dir/storage)" >&2
    exit 0
  fi
  if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
echo "registry.sh: the registry did not answer at $scheme://$addr; last log lines:" >&2
tail -n 20 "$dir/registry.log" >&2 || true
stop
exit 6

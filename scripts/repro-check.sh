#!/usr/bin/env bash
# Reproducibility check: two --no-cache builds of IMAGE on this engine, and a third on a second
# engine with its own data-root (standing in for a second machine). Prints the three image IDs and
# their layer digests; exits 9 unless all three are the same image.
#
#   scripts/repro-check.sh [IMAGE]        (default pytorch-cuda:2.8; `make repro` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-pytorch-cuda:2.8}"
envkit="${ENVKIT:-.venv/bin/envkit}"
second_sock="${ENVKIT_SECOND_SOCK:-/run/envkit-docker2.sock}"

build_id() {
  # envkit prints one JSON object on stdout with --json; progress goes to stderr.
  "$envkit" build "$image" --no-cache --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_id"])'
}

all_images() {
  docker -H "$1" images -a -q --no-trunc | sort -u
}

# The check takes back what each build added, keeping only the image, so that the next build finds
# none of its layers on the engine. It removes every image that appeared during a build, so run it
# on an engine nothing else is building on.
drop_new() {
  local host="$1" before="$2" keep="$3"
  comm -13 <(echo "$before") <(all_images "$host") | { grep -v -x "$keep" || true; } | while read -r id; do
    docker -H "$host" rmi -f "$id" >/dev/null 2>&1 || true
  done
}

layers() {
  docker -H "$1" image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$2"
}

scripts/engine.sh
engine1=unix:///var/run/docker.sock
echo "== build 1 of $image (this engine, --no-cache)" >&2
before=$(all_images "$engine1")
id1=$(build_id)
layers1=$(layers "$engine1" "$id1")
drop_new "$engine1" "$before" "$id1"
echo "== build 2 of $image (this engine, --no-cache)" >&2
before=$(all_images "$engine1")
id2=$(build_id)
layers2=$(layers "$engine1" "$id2")
drop_new "$engine1" "$before" "$id2"

ENVKIT_DOCKER_SOCK="$second_sock" ENVKIT_DOCKERD_ROOT=/var/lib/envkit-docker2 \
  ENVKIT_DOCKERD_EXEC_ROOT=/run/envkit-docker2 ENVKIT_DOCKERD_LOG=/var/log/envkit-dockerd2.log \
  scripts/engine.sh
echo "== build 3 of $image (second engine, own data-root, --no-cache)" >&2
engine2="unix://$second_sock"
before=$(all_images "$engine2")
id3=$(DOCKER_HOST="$engine2" build_id)
layers3=$(layers "$engine2" "$id3")
# The second engine only stands in for another machine: leave it as it was.
drop_new "$engine2" "$before" ""

echo "build 1 (engine 1): $id1"
echo "build 2 (engine 1): $id2"
echo "build 3 (engine 2): $id3"
echo "layers:"
echo "$layers1" | sed 's/^/  /'
if [ "$id1" = "$id2" ] && [ "$id1" = "$id3" ] && [ "$layers1" = "$layers2" ] && [ "$layers1" = "$layers3" ]; then
  echo "identical: same image ID and layer digests on both engines"
  exit 0
fi
echo "DIFFERENT: run \`envkit diff\` on the IDs above to see why" >&2
exit 9

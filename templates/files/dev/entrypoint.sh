#!/bin/bash
# Entrypoint of envkit dev images (PID 1 is tini, which reaps and forwards signals to the group).
#
# ENVKIT_SERVICES: comma-separated subset of jupyter,tensorboard,ssh to start in the background.
# Then either the given command runs (the container ends with it), or, for the command `services`,
# the container lives as long as every service does.
#
# Secrets never come from the image or the environment: `envkit run` writes them into
# $ENVKIT_SECRETS_DIR (0700, owned by the user) before the container starts. SSH host keys are
# made here, at the container's first start, so no two containers share them.
set -euo pipefail

SECRETS=${ENVKIT_SECRETS_DIR:-/run/envkit}
HOST_KEYS=/etc/envkit/ssh
WORKDIR=${ENVKIT_WORKDIR:-/workspace}
LOGDIR=${ENVKIT_TENSORBOARD_LOGDIR:-$WORKDIR/runs}
JUPYTER_PORT=${ENVKIT_JUPYTER_PORT:-8888}
TENSORBOARD_PORT=${ENVKIT_TENSORBOARD_PORT:-6006}

say() { echo "envkit: $*" >&2; }

start_ssh() {
    if [ ! -s "$SECRETS/authorized_keys" ]; then
        say "ssh: no $SECRETS/authorized_keys; start with \`envkit run --ssh --authorized-keys FILE\`"
        exit 64
    fi
    if [ ! -f "$HOST_KEYS/ssh_host_ed25519_key" ]; then
        (
            umask 077
            ssh-keygen -q -t ed25519 -N '' -C '' -f "$HOST_KEYS/ssh_host_ed25519_key"
            ssh-keygen -q -t rsa -b 3072 -N '' -C '' -f "$HOST_KEYS/ssh_host_rsa_key"
        )
        say "ssh: made this container's host keys"
    fi
    ssh-keygen -l -f "$HOST_KEYS/ssh_host_ed25519_key.pub" >&2
    /usr/sbin/sshd -D -e -f /etc/envkit/sshd_config &
}

start_jupyter() {
    if [ ! -s "$SECRETS/jupyter_token" ]; then
        # Started without envkit: make a token, but keep it out of the logs.
        (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(36), end="")' > "$SECRETS/jupyter_token")
        say "jupyter: token written to $SECRETS/jupyter_token (docker exec CONTAINER cat $SECRETS/jupyter_token)"
    fi
    ENVKIT_WORKDIR=$WORKDIR ENVKIT_JUPYTER_PORT=$JUPYTER_PORT jupyter lab &
}

start_tensorboard() {
    mkdir -p "$LOGDIR"
    tensorboard --logdir "$LOGDIR" --host 0.0.0.0 --port "$TENSORBOARD_PORT" --reload_interval 5 &
}

IFS=',' read -r -a services <<< "${ENVKIT_SERVICES:-}"
if [ "${#services[@]}" -gt 0 ] && [ "$(id -u)" = 0 ]; then
    say "the dev services do not run as root; start the container as the image's user"
    exit 64
fi
for service in "${services[@]}"; do
    case "$service" in
        jupyter) start_jupyter ;;
        tensorboard) start_tensorboard ;;
        ssh) start_ssh ;;
        "") ;;
        *) say "unknown service '$service' in ENVKIT_SERVICES (jupyter, tensorboard, ssh)"; exit 64 ;;
    esac
done

if [ "$#" -eq 0 ] || [ "$1" = services ]; then
    if [ -z "$(jobs -p)" ]; then
        exec sleep infinity
    fi
    # The container lives as long as all its services: one exiting stops it, and its status shows.
    status=0
    wait -n || status=$?
    say "a service exited with status $status; stopping the container"
    exit $(( status == 0 ? 1 : status ))
fi
status=0
"$@" || status=$?
exit "$status"

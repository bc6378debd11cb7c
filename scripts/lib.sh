# Shell functions the scripts here share. Sourced, not run:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# install_missing NAME COMMAND=PACKAGE...
# Installs, with apt, the Debian package of each COMMAND not on PATH. When any is missing and
# this is not root, says so (NAME: the calling script, for the message) and exits 3.
install_missing() {
  local name="$1" pair
  shift
  local need_install=()
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || need_install+=("${pair#*=}")
  done
  if [ ${#need_install[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "$name: ${need_install[*]} missing and not root; install them and rerun" >&2
      exit 3
    fi
    echo "$name: installing ${need_install[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
  fi
}

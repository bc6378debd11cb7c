# envkit: login shells (SSH, Jupyter's terminal, editors over SSH) read /etc/profile, which sets
# its own PATH. Put the image's Python environment back in front and start in /workspace.
export VIRTUAL_ENV=/opt/venv
case ":${PATH}:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:${PATH}" ;;
esac
export PATH
if [ "${PWD}" = "${HOME}" ] && [ -d /workspace ]; then
  cd /workspace || true
fi

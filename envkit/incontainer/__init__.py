"""Code that runs inside a container, kept as real files (standard library and torch only).

- ``probe/``: the probe and the benchmark (``probe.py``, ``bench.py``), printing one JSON document.
- ``wheelinstall.py``: lays locked wheels out under a staging root for the drift layer.
- ``collect_packages.py``: lists installed distributions (with a hash of each RECORD) and dpkg's
  packages; snapshot runs it in the image, drift in the running container.
- ``remove_dists.py``: removes named distributions from a prefix in the drift layer's final stage.

Nothing here imports other envkit modules: each file must run on its own with the image's Python.

The probe exists twice on purpose. Every image carries a copy baked in at build time
(``/opt/envkit/probe/``, from the templates' ``COPY probe/``), so that a user can run the probe in
the image with no envkit installed. ``envkit verify`` does not use that copy: it copies its own
probe into the container for each run, so that the host and the container run and parse the same
version of the scripts, whatever envkit version built the image.
"""

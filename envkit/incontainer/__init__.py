"""Code that runs inside a container, kept as real files: the probe and the wheel installer."""

"""List what is installed in an image or a running container, with the standard library only.

Runs inside the container with its own Python and prints one JSON document:
``{"python": {name: {"version", "record_sha256"}}, "apt": {package: version}}``. Each distribution
comes with a hash of its RECORD (which lists every installed file's hash), so a file changed
under an unchanged version still shows. dpkg's list is empty where there is no dpkg.

Usage: ``python3 collect_packages.py [PREFIX]`` (PREFIX defaults to ``/opt/venv``).
"""

import glob
import hashlib
import json
import os
import re
import subprocess
import sys

prefix = sys.argv[1] if len(sys.argv) > 1 else "/opt/venv"
out = {"python": {}, "apt": {}}
for site in sorted(glob.glob(prefix + "/lib/python3*/site-packages")):
    for dist in sorted(glob.glob(site + "/*.dist-info")):
        name = version = None
        with open(os.path.join(dist, "METADATA"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
        record = os.path.join(dist, "RECORD")
        digest = None
        if os.path.exists(record):
            with open(record, "rb") as fh:
                digest = "sha256:" + hashlib.sha256(fh.read()).hexdigest()
        if name:
            key = re.sub(r"[-_.]+", "-", name).lower()
            out["python"][key] = {"version": version, "record_sha256": digest}
try:
    text = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                          capture_output=True, text=True, check=True).stdout
    out["apt"] = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
except (OSError, subprocess.CalledProcessError):
    pass
print(json.dumps(out, sort_keys=True))

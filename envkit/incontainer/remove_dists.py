"""Remove installed distributions from a prefix, with the standard library only.

Runs in the drift layer's final stage with the image's Python and no site (``-I -S -B``): removes
the files each named distribution's RECORD lists (and their bytecode), its dist-info, and
directories left empty, never anything outside the prefix. A name that is not installed fails
the build (exit status 1 with the missing names).

Usage: ``python -I -S -B remove_dists.py PREFIX NAME...`` (names in normalized form).
"""

import csv
import importlib.util
import os
import re
import shutil
import sys

prefix, wanted = os.path.normpath(sys.argv[1]), set(sys.argv[2:])
site = f"{prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
found, emptied = set(), set()
for entry in sorted(os.listdir(site)):
    dist = os.path.join(site, entry)
    if not entry.endswith(".dist-info") or not os.path.isfile(os.path.join(dist, "METADATA")):
        continue
    name = None
    with open(os.path.join(dist, "METADATA"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                break
            if line.startswith("Name:"):
                name = re.sub(r"[-_.]+", "-", line.split(":", 1)[1].strip()).lower()
                break
    if name not in wanted:
        continue
    found.add(name)
    with open(os.path.join(dist, "RECORD"), encoding="utf-8", newline="") as fh:
        rows = [row[0] for row in csv.reader(fh) if row]
    for rel in rows:
        path = os.path.normpath(os.path.join(site, rel))
        if not path.startswith(prefix + os.sep) or path.startswith(dist + os.sep):
            continue
        targets = [path]
        if path.endswith(".py"):
            targets += [importlib.util.cache_from_source(path, optimization=o) for o in ("", 1, 2)]
        for target in targets:
            if os.path.islink(target) or os.path.isfile(target):
                os.remove(target)
                emptied.add(os.path.dirname(target))
    shutil.rmtree(dist)
    print(f"removed {name} ({entry})")
for directory in sorted(emptied, key=len, reverse=True):
    while directory.startswith(site + os.sep) and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
        directory = os.path.dirname(directory)
missing = sorted(wanted - found)
if missing:
    sys.exit("not installed, cannot remove: " + ", ".join(missing))

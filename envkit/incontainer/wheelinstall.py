"""Install wheels into a staging root, with the standard library only.

Runs inside an image (which has no pip) to lay out locked wheels the way an installer would, under
``ROOT`` instead of ``/``: files from the wheel's RECORD (each checked against its hash), the
``.data`` directories moved to their scheme paths, console and GUI entry points written as
launchers, bytecode compiled as checked-hash (PEP 552, so it does not embed a time), and a
dist-info with ``INSTALLER`` and a new ``RECORD`` that lists every installed file.

Usage: ``python -I -S -B wheelinstall.py --root /stage --prefix /opt/venv WHEEL_OR_DIR...``

The result under ``ROOT + PREFIX`` is meant to be copied over PREFIX as one layer. Output does not
depend on the order of the arguments or on the time.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import importlib.util
import io
import os
import py_compile
import re
import sys
import zipfile
from dataclasses import dataclass, field

INSTALLER = "envkit"
_SIGNATURES = ("RECORD", "RECORD.jws", "RECORD.p7s")

LAUNCHER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""


class InstallError(Exception):
    """A wheel that cannot be installed as it is (bad RECORD, unsafe path, a clash)."""


@dataclass(frozen=True)
class Scheme:
    """Where each part of a wheel goes, as absolute paths inside the image."""

    prefix: str
    python: str
    version: str  # "3.11"

    @property
    def site(self) -> str:
        return f"{self.prefix}/lib/python{self.version}/site-packages"

    @property
    def scripts(self) -> str:
        return f"{self.prefix}/bin"

    def path_for(self, key: str, dist_name: str) -> str:
        if key in ("purelib", "platlib"):
            return self.site
        if key == "scripts":
            return self.scripts
        if key == "headers":
            return f"{self.prefix}/include/site/python{self.version}/{dist_name}"
        if key == "data":
            return self.prefix
        raise InstallError(f"unknown wheel data directory {key!r}")


@dataclass
class Installed:
    """What one wheel put where: final absolute path -> file bytes and mode."""

    dist_info: str
    name: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _safe(member: str) -> str:
    parts = member.split("/")
    if member.startswith("/") or "\\" in member or any(p in ("..", "") for p in parts[:-1]) or not parts[-1]:
        raise InstallError(f"unsafe path in wheel: {member!r}")
    return member


def _dist_info_dir(names: list[str]) -> str:
    found = sorted({n.split("/", 1)[0] for n in names if re.match(r"^[^/]+\.dist-info/WHEEL$", n)})
    if len(found) != 1:
        raise InstallError(f"expected one .dist-info directory with a WHEEL file, found {found or 'none'}")
    return found[0]


def _read_record(text: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(text)):
        if row:
            rows[row[0]] = (row[1] if len(row) > 1 else "", row[2] if len(row) > 2 else "")
    return rows


def _metadata_name(text: str) -> str:
    for line in text.splitlines():
        if not line.strip():
            break
        if line.startswith("Name:"):
            return line.split(":", 1)[1].strip()
    raise InstallError("METADATA has no Name")


def _mode(info: zipfile.ZipInfo) -> int:
    return 0o755 if (info.external_attr >> 16) & 0o111 else 0o644


def read_wheel(path: str, scheme: Scheme) -> Installed:
    """Every file of the wheel at its final place, each checked against the wheel's RECORD."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        names = [_safe(i.filename) for i in infos]
        dist_info = _dist_info_dir(names)
        record = _read_record(archive.read(f"{dist_info}/RECORD").decode("utf-8"))
        name = _metadata_name(archive.read(f"{dist_info}/METADATA").decode("utf-8", "replace"))
        data_dir = dist_info[: -len(".dist-info")] + ".data"
        result = Installed(dist_info=dist_info, name=name)
        for info, member in zip(infos, names, strict=True):
            if member in (f"{dist_info}/{s}" for s in (*_SIGNATURES, "INSTALLER")):
                continue  # written anew below
            data = archive.read(info)
            expected, _size = record.get(member, ("", ""))
            if not expected:
                raise InstallError(f"{os.path.basename(path)}: {member} is not listed with a hash in RECORD")
            if record_hash(data) != expected:
                raise InstallError(f"{os.path.basename(path)}: {member} does not match its RECORD hash")
            mode = _mode(info)
            target, key = target_of(member, data_dir, name, scheme)
            if key == "scripts":
                data, mode = _fix_shebang(data, scheme.python), 0o755
            if target in result.files:
                raise InstallError(f"{os.path.basename(path)} installs {target} twice")
            result.files[target] = (data, mode)
    _add_entry_points(result, scheme)
    return result


def target_of(member: str, data_dir: str, dist_name: str, scheme: Scheme) -> tuple[str, str]:
    """Where a wheel member is installed, and the ``.data`` directory it came from ("" if none)."""
    if member.startswith(data_dir + "/"):
        key, _, rest = member[len(data_dir) + 1 :].partition("/")
        if not rest:
            raise InstallError(f"unsafe path in wheel: {member!r}")
        return f"{scheme.path_for(key, dist_name)}/{rest}", key
    return f"{scheme.site}/{member}", ""  # purelib and platlib are one directory here


def _fix_shebang(data: bytes, python: str) -> bytes:
    match = re.match(rb"^#!python(w)?(?P<rest>[^\r\n]*)(\r?\n)", data)
    if not match:
        return data
    return b"#!" + python.encode() + match.group("rest") + b"\n" + data[match.end() :]


def _add_entry_points(result: Installed, scheme: Scheme) -> None:
    text = result.files.get(f"{scheme.site}/{result.dist_info}/entry_points.txt")
    if text is None:
        return
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text[0].decode("utf-8"))
    for section in ("console_scripts", "gui_scripts"):
        if not parser.has_section(section):
            continue
        for script, value in sorted(parser.items(section)):
            target = value.split("[", 1)[0].strip()
            module, _, attr = target.partition(":")
            if not module or not attr or "/" in script:
                raise InstallError(f"bad entry point {script} = {value}")
            module, attr = module.strip(), attr.strip()
            head = attr.split(".")[0]
            launcher = LAUNCHER.format(python=scheme.python, module=module, head=head, call=attr)
            result.files[f"{scheme.scripts}/{script}"] = (launcher.encode(), 0o755)


def _compile(files: dict[str, tuple[bytes, int]], scheme: Scheme, root: str) -> dict[str, tuple[bytes, int]]:
    """Checked-hash bytecode for each module installed into site-packages (skipped if it fails)."""
    compiled: dict[str, tuple[bytes, int]] = {}
    for target in sorted(files):
        if not target.startswith(scheme.site + "/") or not target.endswith(".py"):
            continue
        cfile = importlib.util.cache_from_source(target)
        try:
            py_compile.compile(
                root + target,
                cfile=root + cfile,
                dfile=target,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
        except py_compile.PyCompileError:
            continue  # source for another Python version: installers skip it too
        with open(root + cfile, "rb") as fh:
            compiled[cfile] = (fh.read(), 0o644)
    return compiled


def _write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        raise InstallError(f"{path} already exists")
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def _record_text(files: dict[str, tuple[bytes, int]], scheme: Scheme, record_path: str) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    rows = [(os.path.relpath(p, scheme.site), record_hash(d), str(len(d))) for p, (d, _m) in files.items()]
    rows.append((os.path.relpath(record_path, scheme.site), "", ""))
    for row in sorted(rows):
        writer.writerow(row)
    return buffer.getvalue().encode("utf-8")


def install_wheel(path: str, root: str, scheme: Scheme) -> Installed:
    """Install one wheel under ``root``; return what it installed (final paths)."""
    wheel = read_wheel(path, scheme)
    for target, (data, mode) in sorted(wheel.files.items()):
        _write(root + target, data, mode)
    wheel.files.update(_compile(wheel.files, scheme, root))
    dist_info = f"{scheme.site}/{wheel.dist_info}"
    installer = f"{dist_info}/INSTALLER"
    _write(root + installer, (INSTALLER + "\n").encode(), 0o644)
    wheel.files[installer] = ((INSTALLER + "\n").encode(), 0o644)
    record_path = f"{dist_info}/RECORD"
    _write(root + record_path, _record_text(wheel.files, scheme, record_path), 0o644)
    return wheel


def wheel_paths(arguments: list[str]) -> list[str]:
    paths: list[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            paths.extend(os.path.join(argument, n) for n in os.listdir(argument) if n.endswith(".whl"))
        else:
            paths.append(argument)
    return sorted(paths, key=os.path.basename)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = {"--root": "/", "--prefix": sys.prefix, "--python": ""}
    rest: list[str] = []
    while args:
        arg = args.pop(0)
        if arg in options and args:
            options[arg] = args.pop(0)
        else:
            rest.append(arg)
    prefix = options["--prefix"].rstrip("/")
    scheme = Scheme(
        prefix=prefix,
        python=options["--python"] or f"{prefix}/bin/python",
        version=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
    root = options["--root"].rstrip("/")
    os.umask(0o022)
    paths = wheel_paths(rest)
    if not paths:
        print("wheelinstall: no wheels given", file=sys.stderr)
        return 2
    try:
        for path in paths:
            wheel = install_wheel(path, root, scheme)
            print(f"installed {wheel.dist_info} ({len(wheel.files)} files)")
    except (InstallError, zipfile.BadZipFile, KeyError) as exc:
        print(f"wheelinstall: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

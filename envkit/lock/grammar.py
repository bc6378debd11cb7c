"""What each field of a lock file may hold, by the grammar of the tool that reads it.

Lock files travel between people and machines, so every value is checked on the way in:
Debian package names and versions (Debian Policy 5.6.1 and 5.6.12), Python distribution names
(PEP 503) and versions (PEP 440), sha256 digests, and no control characters anywhere.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Annotated

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator

# Policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting alphanumeric.
DEBIAN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.\-]+")
# Policy 5.6.12: [epoch:]upstream_version[-debian_revision]. The upstream part starts with a digit;
# a hyphen is allowed only when a revision follows, so the version cannot end with one.
DEBIAN_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9](?:[A-Za-z0-9.+~\-]*[A-Za-z0-9.+~])?")
SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
SHA256_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A PEP 508 name, before normalisation.
PYTHON_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._\-]*[A-Za-z0-9])?")


def control_char(text: str, *, allow_newline: bool = False) -> str | None:
    """The first control or format character in ``text`` (newline allowed when asked), or None."""
    for char in text:
        if char == "\n" and allow_newline:
            continue
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return char
    return None


def _fullmatch_check(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    """A check that returns the text when ``pattern`` matches all of it, and names ``what`` if not."""

    def check(text: str) -> str:
        if not pattern.fullmatch(text):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return check


check_debian_name = _fullmatch_check(DEBIAN_NAME_RE, "a Debian package name (Debian Policy 5.6.1)")
check_debian_version = _fullmatch_check(DEBIAN_VERSION_RE, "a Debian version (Debian Policy 5.6.12)")
check_sha256_hex = _fullmatch_check(SHA256_HEX_RE, "a sha256 digest (exactly 64 lower-case hex digits)")


def check_python_name(name: str) -> str:
    """A distribution name already in its PEP 503 normal form."""
    if not PYTHON_NAME_RE.fullmatch(name) or canonicalize_name(name) != name:
        raise ValueError(f"{name!r} is not a normalised distribution name (PEP 503)")
    return name


def check_python_version(version: str) -> str:
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise ValueError(f"{version!r} is not a PEP 440 version") from None
    if control_char(version) or version != version.strip() or " " in version or str(parsed) == "":
        raise ValueError(f"{version!r} is not a PEP 440 version")
    return version


# Model field types checked by the functions above.
PythonName = Annotated[str, AfterValidator(check_python_name)]
PythonVersion = Annotated[str, AfterValidator(check_python_version)]

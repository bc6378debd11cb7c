"""Who wrote a manifest or a bundle: OpenSSH signatures, checked against an allowed-signers file.

The digest inside a manifest catches accidents; it cannot tell who wrote the file. envkit signs
with keys people already have, as git does: ``ssh-keygen -Y sign`` with a private key (or a
public key whose private half is in ssh-agent), and ``ssh-keygen -Y verify`` against an
allowed-signers file (``identity key-type key`` per line, see ssh-keygen(1)). Each kind of file
has its own namespace, so a manifest signature cannot pass for a bundle's.

A manifest's signature is a detached file beside it (``manifest.json.sig``); a bundle's signs its
index (which lists the manifest's digest and every member's sha256) and travels inside the tar.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import IntegrityError, MissingDependency, UsageError
from envkit.untrusted import clean

MANIFEST_NAMESPACE = "envkit-manifest"
BUNDLE_NAMESPACE = "envkit-bundle"
SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_BYTES = 64 << 10
_TIMEOUT = 120


@dataclass(frozen=True)
class Trust:
    """``--trust ALLOWED_SIGNERS [--signer IDENTITY]``: who may have signed what a command reads."""

    allowed_signers: Path
    signer: str | None = None

    def expected(self) -> str:
        return self.signer or f"a signer listed in {self.allowed_signers}"


def trust_from_options(allowed_signers: Path | None, signer: str | None) -> Trust | None:
    if allowed_signers is None:
        if signer is not None:
            raise UsageError("--signer needs --trust ALLOWED_SIGNERS")
        return None
    if not allowed_signers.is_file():
        raise UsageError(f"--trust {allowed_signers}: no such allowed-signers file")
    if signer is not None and (not signer or any(c.isspace() for c in signer) or clean(signer) != signer):
        raise UsageError(f"--signer {signer!r} is not a signer identity (no spaces or control characters)")
    return Trust(allowed_signers, signer)


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise MissingDependency("signing needs ssh-keygen (OpenSSH 8.2 or newer)",
                                hint="install openssh-client")
    return found


def _run(args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([_ssh_keygen(), *args], input=data, capture_output=True, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UsageError("ssh-keygen did not finish (waiting for a passphrase?)",
                         hint="load the key into ssh-agent and pass its public key to --sign") from None


def sign(data: bytes, key: Path, namespace: str) -> bytes:
    """An armoured SSH signature of ``data`` by ``key`` (a private key, or a public key in ssh-agent)."""
    if not key.is_file():
        raise UsageError(f"--sign {key}: no such key file")
    result = _run(["-Y", "sign", "-q", "-f", str(key), "-n", namespace], data)
    if result.returncode != 0 or b"BEGIN SSH SIGNATURE" not in result.stdout:
        detail = clean(result.stderr.decode(errors="replace").strip(), keep_newlines=True)
        raise UsageError(f"ssh-keygen could not sign with {key}", details=detail[-2000:])
    return result.stdout


def _principals(signature_file: Path, trust: Trust) -> list[str]:
    result = _run(["-Y", "find-principals", "-s", str(signature_file), "-f", str(trust.allowed_signers)], b"")
    if result.returncode != 0:
        return []
    lines = result.stdout.decode(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def verify(data: bytes, signature: bytes | None, trust: Trust, namespace: str, what: str) -> str:
    """Check ``signature`` over ``data``; return the signer's identity, or refuse with exit 5."""
    if signature is None:
        raise IntegrityError(f"{what} is not signed; --trust expects a signature by {trust.expected()}",
                             hint="ask its author to sign it (envkit snapshot/bundle --sign KEY)")
    if len(signature) > MAX_SIGNATURE_BYTES or b"BEGIN SSH SIGNATURE" not in signature:
        raise IntegrityError(
            f"{what}'s signature is not an SSH signature; expected one by {trust.expected()}"
        )
    with tempfile.TemporaryDirectory(prefix="envkit-verify-") as tmp:
        signature_file = Path(tmp) / "data.sig"
        signature_file.write_bytes(signature)
        candidates = [trust.signer] if trust.signer else _principals(signature_file, trust)
        for identity in candidates:
            result = _run(["-Y", "verify", "-f", str(trust.allowed_signers), "-I", identity, "-n", namespace,
                           "-s", str(signature_file)], data)
            if result.returncode == 0:
                return identity
    raise IntegrityError(
        f"{what} is not signed by {trust.expected()}: the signature does not verify "
        "(another key, another kind of file, or content changed after signing)"
    )


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def read_signature(path: Path) -> bytes | None:
    """The detached signature beside ``path``, or None when there is none."""
    sig = signature_path(path)
    try:
        with sig.open("rb") as handle:
            return handle.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {sig}: {exc.strerror or exc}") from None

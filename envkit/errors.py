"""One root exception for everything envkit refuses or fails at.

Each subclass carries the process exit code that ``envkit.cli.app.main`` maps it to.
Core modules raise these; only the CLI turns them into exit codes and messages.
"""

from __future__ import annotations


class EnvkitError(Exception):
    """Root of every error envkit raises on purpose.

    Raise a subclass: the exit code tells a script what went wrong, and 1 (this class) means a bug.
    """

    exit_code: int = 1
    label: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:  # the message alone; hint and details are shown by the CLI
        return self.message


class UsageError(EnvkitError):
    """Bad command-line input: unknown image, bad option value."""

    exit_code = 2
    label = "usage error"


class SpecError(UsageError):
    """An image spec that does not validate. Names the file, the field and the offending value."""

    label = "spec error"

    def __init__(self, source: str, field: str, problem: str, *, hint: str | None = None) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        location = f"{source}: {field}" if field else source
        super().__init__(f"{location}: {problem}", hint=hint)


class CompatError(UsageError):
    """A torch/CUDA/cuDNN/Python combination that does not exist."""

    label = "compatibility error"


class EngineUnreachable(EnvkitError):
    exit_code = 3
    label = "docker engine unreachable"


class MissingDependency(UsageError):
    """A package or tool envkit needs is not installed."""

    label = "missing dependency"


class BuildFailed(EnvkitError):
    exit_code = 4
    label = "build failed"


class LockFailed(BuildFailed):
    """The resolver could not produce a lock (uv's own output is in ``details``)."""

    label = "lock failed"


class EngineRefused(BuildFailed):
    """The Docker engine answered but refused the request: a load, a save, a container start."""

    label = "engine refused"


class DiskFull(BuildFailed):
    """No space left where envkit or the engine writes (temporary layers, archives, the image store)."""

    label = "disk full"


class IntegrityError(EnvkitError):
    """A hash mismatch or a tampered file."""

    exit_code = 5
    label = "integrity failure"


class NetworkError(EnvkitError):
    exit_code = 6
    label = "network unreachable"


class RegistryError(NetworkError):
    """A registry answered but refused: credentials, the repository, TLS trust, an unknown manifest."""

    label = "registry refused"


class GpuHostNotReady(EnvkitError):
    exit_code = 7
    label = "GPU host not ready"


class VerificationFailed(EnvkitError):
    exit_code = 8
    label = "verification failed"


class ReproMismatch(EnvkitError):
    exit_code = 9
    label = "reproducibility mismatch"


class Interrupted(EnvkitError):
    exit_code = 130
    label = "interrupted"


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "internal": 1,
    "usage": UsageError.exit_code,
    "engine": EngineUnreachable.exit_code,
    "build": BuildFailed.exit_code,
    "integrity": IntegrityError.exit_code,
    "network": NetworkError.exit_code,
    "gpu_host": GpuHostNotReady.exit_code,
    "verify": VerificationFailed.exit_code,
    "repro": ReproMismatch.exit_code,
    "interrupted": Interrupted.exit_code,
}

"""NAME on every command: a catalog ``name:tag`` or a path to a spec file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envkit.errors import UsageError
from envkit.resources import images_dir
from envkit.spec.model import ImageSpec, load_spec


@dataclass(frozen=True)
class SpecRef:
    """A loaded spec and where it came from (its lock file sits beside it)."""

    spec: ImageSpec
    path: Path
    display: str

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(images_dir().parent))
    except ValueError:
        return str(path)


def spec_path(name: str) -> Path:
    """Map ``pytorch-cuda:2.8`` to ``images/pytorch-cuda/2.8.yaml``; a path is used as given.

    The catalog wins: NAME is read as a file only when it contains a ``/`` or ends in ``.yaml`` /
    ``.yml``, so a stray local file called ``pytorch-cuda:2.8`` can never stand in for the catalog
    image of that name. Write ``./FILE`` to mean a local file.
    """
    candidate = Path(name)
    if "/" in name or name.endswith((".yaml", ".yml")):
        if not candidate.is_file():
            raise UsageError(f"spec file {name} does not exist")
        return candidate
    image, sep, tag = name.partition(":")
    if not sep or not image or not tag or ".." in name:
        hint = "`envkit list` shows the catalog"
        if candidate.is_file():
            hint = f"to use the local file, write ./{name}; {hint}"
        raise UsageError(
            f"{name!r} is neither a catalog name like pytorch-cuda:2.8 nor a spec file", hint=hint
        )
    path = images_dir() / image / f"{tag}.yaml"
    if not path.is_file():
        known = ", ".join(ref for ref, _ in list_catalog_paths()) or "none"
        hint = f"known images: {known}"
        if candidate.is_file():
            hint += f"; catalog names win over local files: write ./{name} to use the file"
        raise UsageError(f"no catalog image {name}", hint=hint)
    return path


def load(name: str) -> SpecRef:
    path = spec_path(name)
    display = _display(path)
    spec = load_spec(path, display=display)
    if path.parent.parent == images_dir() and (path.parent.name, path.stem) != (spec.name, spec.tag):
        raise UsageError(f"{display}: name/tag {spec.ref} do not match the file's place in the catalog")
    return SpecRef(spec=spec, path=path, display=display)


def list_catalog_paths() -> list[tuple[str, Path]]:
    root = images_dir()
    found = [(f"{p.parent.name}:{p.stem}", p) for p in root.glob("*/*.yaml")]
    return sorted(found, key=lambda item: _sort_key(item[0]))


def list_catalog() -> list[tuple[str, ImageSpec]]:
    return [(ref, load(ref).spec) for ref, _ in list_catalog_paths()]


def image_ref_for(name: str) -> str:
    """The Docker tag of a catalog image, or the name itself when it is already an image reference."""
    if name.startswith("sha256:"):
        return name  # an image ID
    if ":" in name and "/" not in name and not name.endswith((".yaml", ".yml")):
        return load(name).spec.image_tag
    if name.endswith((".yaml", ".yml")):
        return load(name).spec.image_tag
    return name


def _sort_key(ref: str) -> tuple[str, list[object]]:
    image, _, tag = ref.partition(":")
    parts: list[object] = []
    for piece in tag.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return image, parts

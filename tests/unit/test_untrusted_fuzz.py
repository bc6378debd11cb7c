"""Property-based tests: the spec, lock and archive readers fed random and mutated input.

Whatever they are given, they either accept it or refuse it with a documented exit code: never
exit 1 (a plain EnvkitError or any other exception), and they write nothing outside their place.
Set ENVKIT_FUZZ_EXAMPLES to run more inputs per reader; a summary is printed at the end (-s).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envkit.engine.archive import import_image
from envkit.errors import EnvkitError
from envkit.lock.python import parse_lock, read_lock
from envkit.resources import images_dir
from envkit.spec.model import parse_spec, parse_spec_text
from tests.tarfiles import tar_of

EXAMPLES = int(os.environ.get("ENVKIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
SEEN: dict[str, Counter[int]] = {}

SPEC_BYTES = (images_dir() / "pytorch-cuda" / "2.8.yaml").read_bytes()
LOCK_TEXT = (images_dir() / "resnet" / "2.8.lock").read_text()
LOCK_DATA = json.loads(LOCK_TEXT)


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    for reader, codes in sorted(SEEN.items()):
        shown = ", ".join(f"exit {code}: {n}" for code, n in sorted(codes.items()))
        print(f"\n[fuzz] {reader}: {sum(codes.values())} inputs; {shown}; internal errors: {codes.get(1, 0)}")


def _outcome(reader: str, call: Callable[[], object]) -> None:
    """Run one input; only success or an EnvkitError with a documented, non-internal code passes."""
    codes = SEEN.setdefault(reader, Counter())
    try:
        call()
    except EnvkitError as exc:
        codes[exc.exit_code] += 1
        assert type(exc) is not EnvkitError and exc.exit_code != 1, f"internal error: {exc!r}"
        return
    except Exception as exc:  # noqa: BLE001 - exactly what this test looks for
        codes[1] += 1
        raise AssertionError(f"{reader}: internal error {type(exc).__name__}: {exc}") from exc
    codes[0] += 1


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate", "replace"]),
        st.floats(0, 1, allow_nan=False),
        st.binary(min_size=1, max_size=12),
    ),
    min_size=1,
    max_size=6,
)
_NASTY = st.sampled_from([b"\n", b"\\\n", b"\r", b"\x00", b"\x1b[2J", b"$(", b"`", b";", b"'", b'"', b"..",
                          b"\xff\xfe", b"\xe9", b"{", b"[", b"&a", b"*a", b": ", b"- ", b"\t", b"#"])


def _mutate(data: bytes, ops: list[tuple[str, float, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, chunk in ops:
        at = int(where * len(out)) if out else 0
        if op == "flip" and out:
            out[min(at, len(out) - 1)] ^= chunk[0] or 1
        elif op == "insert":
            out[at:at] = chunk
        elif op == "delete":
            del out[at : at + len(chunk) * 7]
        elif op == "truncate":
            del out[at:]
        elif op == "duplicate":
            out[at:at] = out[at : at + 64]
        elif op == "replace":
            out[at : at + len(chunk)] = chunk
    return bytes(out)


def _spec_reader(raw: bytes) -> Callable[[], object]:
    return lambda: parse_spec_text(raw, "fuzz.yaml")


@FUZZ
@given(st.binary(max_size=2048))
def test_spec_reader_random_bytes(raw: bytes) -> None:
    _outcome("spec (random bytes)", _spec_reader(raw))


@FUZZ
@given(_OPS, st.lists(st.tuples(st.floats(0, 1, allow_nan=False), _NASTY), max_size=4))
def test_spec_reader_mutated_catalog_spec(ops: list[tuple[str, float, bytes]],
                                          nasty: list[tuple[float, bytes]]) -> None:
    raw = _mutate(SPEC_BYTES, ops)
    for where, chunk in nasty:
        at = int(where * len(raw))
        raw = raw[:at] + chunk + raw[at:]
    _outcome("spec (mutated)", _spec_reader(raw))


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.sampled_from(["name", "tag", "base", "python", "torch", "torchvision", "pip", "apt", "env",
                        "labels", "user", "source_date_epoch", "platform", "variant", "description", "extra"]),
       _JSONISH)
def test_spec_reader_structured_values(field: str, value: Any) -> None:
    data = yaml.safe_load(SPEC_BYTES)
    data[field] = value
    _outcome("spec (structured)", lambda: parse_spec(data, "fuzz.yaml"))


def _lock_file(tmp_path: Path, raw: bytes) -> Callable[[], object]:
    path = tmp_path / "fuzz.lock"
    path.write_bytes(raw)
    return lambda: read_lock(path)


@FUZZ
@given(st.binary(max_size=2048))
def test_lock_reader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    _outcome("lock (random bytes)", _lock_file(tmp_path, raw))


@FUZZ
@given(_OPS)
def test_lock_reader_mutated_catalog_lock(tmp_path: Path, ops: list[tuple[str, float, bytes]]) -> None:
    _outcome("lock (mutated)", _lock_file(tmp_path, _mutate(LOCK_TEXT.encode(), ops)))


@FUZZ
@given(st.sampled_from(["spec_digest", "source_date_epoch", "base", "apt", "builder_apt",
                        "python_requirements", "packages", "schema_version", "extra"]),
       st.one_of(_JSONISH, st.dictionaries(st.text(max_size=20), st.text(max_size=30), max_size=3)),
       st.text(max_size=30))
def test_lock_reader_structured_values(field: str, value: Any, suffix: str) -> None:
    data = json.loads(LOCK_TEXT)
    data[field] = value
    if data.get("apt"):
        name = next(iter(LOCK_DATA["apt"]))
        data.setdefault("builder_apt", {})
        if isinstance(data["builder_apt"], dict):
            data["builder_apt"][name] = LOCK_DATA["apt"][name] + suffix
    _outcome("lock (structured)", lambda: parse_lock(data, "fuzz.lock"))


class _Api:
    def load_image(self, data: Any) -> Iterator[dict[str, str]]:
        for _chunk in data:
            pass
        yield {"stream": "Loaded image ID: sha256:" + "e" * 64 + "\n"}

    def inspect_image(self, ref: str) -> dict[str, str]:
        return {"Id": ref}


class _Client:
    api = _Api()


_CONFIG = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
_DOCKER_ARCHIVE = tar_of([("manifest.json", b'[{"Config":"c.json","RepoTags":null,"Layers":["l/layer.tar"]}]'),
                        ("c.json", _CONFIG), ("l/layer.tar", tar_of([("a", b"x" * 600)]))])
_LAYER = tar_of([("a", b"y" * 700)])


def _oci_layout() -> bytes:
    import hashlib

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    manifest = json.dumps({"config": {"digest": digest(_CONFIG)},
                           "layers": [{"digest": digest(_LAYER), "mediaType": "application/vnd.oci.image.layer.v1.tar"}]
                           }).encode()
    index = json.dumps({"manifests": [{"digest": digest(manifest),
                                       "annotations": {"io.containerd.image.name": "demo:1"}}]}).encode()
    return tar_of([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                 ("blobs/sha256/" + digest(manifest)[7:], manifest), ("blobs/sha256/" + digest(_CONFIG)[7:], _CONFIG),
                 ("blobs/sha256/" + digest(_LAYER)[7:], _LAYER)])


_OCI = _oci_layout()


def _import(tmp_path: Path, raw: bytes, reader: str) -> None:
    place = tmp_path / "archives"
    place.mkdir(exist_ok=True)
    path = place / "fuzz.tar"
    path.write_bytes(raw)
    _outcome(reader, lambda: import_image(_Client(), path, max_size=64 << 20))  # type: ignore[arg-type]
    assert [p.name for p in place.iterdir()] == ["fuzz.tar"]  # nothing written beside it


@FUZZ
@given(st.binary(max_size=4096))
def test_archive_reader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    _import(tmp_path, raw, "archive (random bytes)")


@FUZZ
@given(st.sampled_from(["docker-archive", "oci"]), st.sampled_from(["plain", "zstd"]), _OPS)
def test_archive_reader_mutated_archives(tmp_path: Path, kind: str, compression: str,
                                         ops: list[tuple[str, float, bytes]]) -> None:
    data = _DOCKER_ARCHIVE if kind == "docker-archive" else _OCI
    if compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    _import(tmp_path, _mutate(data, ops), f"archive (mutated {kind}, {compression})")


def test_the_unmutated_inputs_are_accepted(tmp_path: Path) -> None:
    parse_spec_text(SPEC_BYTES, "pytorch-cuda/2.8.yaml")
    parse_lock(LOCK_DATA, "resnet/2.8.lock")
    for data in (_DOCKER_ARCHIVE, _OCI):
        path = tmp_path / "ok.tar"
        path.write_bytes(data)
        import_image(_Client(), path)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Manifests and bundle indexes (what restore, bundle, diff and sbom read from other people)


def _manifest_text() -> str:
    from envkit.record.manifest import manifest_text
    from tests.unit.test_record_snapshot import _manifest

    return manifest_text(_manifest())


MANIFEST_TEXT = _manifest_text()
MANIFEST_DATA = json.loads(MANIFEST_TEXT)


def _read_manifest_in(tmp_path: Path, raw: bytes, reader: str) -> None:
    """Read (and, when accepted, plan a restore from) a manifest; nothing may appear beside it."""
    from envkit.record.manifest import read_manifest
    from envkit.record.snapshot import plan_from_manifest

    place = tmp_path / "manifests"
    place.mkdir(exist_ok=True)
    for leftover in place.iterdir():
        leftover.unlink()
    path = place / "m.json"
    path.write_bytes(raw)
    cwd = os.getcwd()
    os.chdir(place)
    try:
        _outcome(reader, lambda: plan_from_manifest(read_manifest(path), ca_bundle=None))
    finally:
        os.chdir(cwd)
    assert [p.name for p in place.iterdir()] == ["m.json"]


@FUZZ
@given(st.binary(max_size=2048))
def test_manifest_reader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    _read_manifest_in(tmp_path, raw, "manifest (random bytes)")


@FUZZ
@given(_OPS)
def test_manifest_reader_mutated_manifest(tmp_path: Path, ops: list[tuple[str, float, bytes]]) -> None:
    _read_manifest_in(tmp_path, _mutate(MANIFEST_TEXT.encode(), ops), "manifest (mutated)")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


MANIFEST_PATHS = _paths(MANIFEST_DATA)
_NASTY_TEXT = st.sampled_from(["x\nRUN id", "a\\\nRUN id", "../../etc", "\x1b[2J", "victim:latest", "", "-",
                               "sha256:" + "0" * 64, "0" * 64, "https://x/y.whl", "$(id)", "\u202e", "a" * 5000])


@FUZZ
@given(st.sampled_from(MANIFEST_PATHS), _JSONISH | _NASTY_TEXT, st.booleans())
def test_manifest_reader_resealed_field_values(tmp_path: Path, where: tuple[Any, ...], value: Any,
                                               add_key: bool) -> None:
    """A field replaced and the digest recomputed, as someone editing a manifest on purpose would."""
    from envkit.record.manifest import content_digest

    data = json.loads(MANIFEST_TEXT)
    target = data
    for part in where[:-1]:
        target = target[part]
    if add_key and isinstance(target, dict):
        target[f"{where[-1]}x"] = value
    else:
        target[where[-1]] = value
    data["digest"] = content_digest(data)
    _read_manifest_in(tmp_path, json.dumps(data).encode(), "manifest (resealed field)")


BUNDLE_INDEX = {
    "schema_version": 1, "manifest_digest": "sha256:" + "3" * 64, "image_id": "sha256:" + "4" * 64,
    "base_ref": "envkit/debian:bookworm", "base_image_id": "sha256:" + "5" * 64,
    "files": {"base/image.tar": {"sha256": hashlib.sha256(b"x").hexdigest(), "size": 1},
              "wheels/a-1-py3-none-any.whl": {"sha256": hashlib.sha256(b"y").hexdigest(), "size": 1}},
    "wheels": {"a-1-py3-none-any.whl": hashlib.sha256(b"y").hexdigest()},
}
BUNDLE_INDEX_TEXT = json.dumps(BUNDLE_INDEX, indent=2, sort_keys=True)


def _open_bundle_in(tmp_path: Path, index: bytes, reader: str) -> None:
    """A bundle whose index is ``index``, opened; nothing may appear beside it."""
    from envkit.record.bundle import INDEX_NAME, MANIFEST_NAME, open_bundle

    place = tmp_path / "bundles"
    place.mkdir(exist_ok=True)
    for leftover in place.iterdir():
        leftover.unlink()
    path = place / "fuzz.bundle"
    with tarfile.open(path, "w") as tar:
        for name, data in ((INDEX_NAME, index), (MANIFEST_NAME, MANIFEST_TEXT.encode()),
                           ("base/image.tar", b"x"), ("wheels/a-1-py3-none-any.whl", b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _outcome(reader, lambda: open_bundle(path))
    assert [p.name for p in place.iterdir()] == ["fuzz.bundle"]


@FUZZ
@given(st.binary(max_size=2048))
def test_bundle_index_reader_random_bytes(tmp_path: Path, raw: bytes) -> None:
    _open_bundle_in(tmp_path, raw, "bundle index (random bytes)")


@FUZZ
@given(_OPS)
def test_bundle_index_reader_mutated_index(tmp_path: Path, ops: list[tuple[str, float, bytes]]) -> None:
    _open_bundle_in(tmp_path, _mutate(BUNDLE_INDEX_TEXT.encode(), ops), "bundle index (mutated)")


@FUZZ
@given(st.sampled_from(_paths(BUNDLE_INDEX)), _JSONISH | _NASTY_TEXT)
def test_bundle_index_reader_structured_values(tmp_path: Path, where: tuple[Any, ...], value: Any) -> None:
    data = json.loads(BUNDLE_INDEX_TEXT)
    target = data
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    _open_bundle_in(tmp_path, json.dumps(data).encode(), "bundle index (structured)")

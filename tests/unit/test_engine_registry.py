"""Registries: references, error mapping, push and pull through the engine, locations in manifests,
and restore pulling by digest before it rebuilds. The engine is the one fake client; the real
registry is exercised in tests/integration/test_registry_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import docker.errors
import pytest

from envkit.cli import app as cli_module
from envkit.engine import registry
from envkit.engine.registry import Credentials, parse_reference, pull_image, push_image, registry_error
from envkit.errors import IntegrityError, NetworkError, RegistryError, UsageError
from envkit.record.fetch import fetch_manifest_image
from envkit.record.manifest import content_digest, read_manifest, seal_manifest, write_manifest
from tests.fakes import FakeClient, FakeImage
from tests.unit.test_record_snapshot import _manifest

IMAGE_ID = "sha256:" + "c" * 64
OTHER_ID = "sha256:" + "e" * 64
DIGEST = "sha256:" + "7" * 64
LOCATION = f"127.0.0.1:5000/team/x@{DIGEST}"


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENVKIT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, name, tag, digest, host", [
    ("127.0.0.1:5000/team/x:1", "127.0.0.1:5000/team/x", "1", None, "127.0.0.1:5000"),
    (LOCATION, "127.0.0.1:5000/team/x", None, DIGEST, "127.0.0.1:5000"),
    ("registry.example.com/a/b-c_d.e", "registry.example.com/a/b-c_d.e", None, None, "registry.example.com"),
    ("localhost/x:latest", "localhost/x", "latest", None, "localhost"),
    ("team/x:2.8", "team/x", "2.8", None, "docker.io"),
])
def test_references_parse(text: str, name: str, tag: str | None, digest: str | None, host: str) -> None:
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.digest, ref.registry) == (name, tag, digest, host)
    assert str(ref) == text


@pytest.mark.parametrize("text", [
    "", "Team/x:1", "x:1 --insecure", "host:5000/x@sha256:abc", "x@md5:" + "0" * 32, "x::1", "-x",
    "a/" * 200 + "x", "x:" + "t" * 129, "host:5000/x:1\n", "x@sha256:" + "A" * 64,
])
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)
    assert not registry.is_location(text)


def test_credentials_never_show_the_password() -> None:
    credentials = Credentials("ci", "s3cret-pass")
    assert "s3cret-pass" not in repr(credentials)
    assert credentials.auth_config() == {"username": "ci", "password": "s3cret-pass"}


# --- what a registry's refusal becomes ----------------------------------------------------------


@pytest.mark.parametrize("message, kind, code, hint_part", [
    ('Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused',
     NetworkError, 6, "address"),
    ("unauthorized: authentication required", RegistryError, 6, "--password-stdin"),
    ("no basic auth credentials", RegistryError, 6, "docker login"),
    ('Get "https://10.0.0.5:5000/v2/": x509: certificate signed by unknown authority',
     RegistryError, 6, "/etc/docker/certs.d/127.0.0.1:5000/ca.crt"),
    ("denied: requested access to the resource is denied", RegistryError, 6, "repository"),
    ("manifest unknown: manifest unknown", RegistryError, 6, "digest"),
    ("filesystem layer verification failed for digest sha256:" + "e" * 64, IntegrityError, 5, "damaged"),
    ("http: server gave HTTP response to HTTPS client", RegistryError, 6, "insecure-registries"),
])
def test_registry_messages_map_to_exit_codes_with_hints(
    message: str, kind: type, code: int, hint_part: str
) -> None:
    error = registry_error(message, parse_reference(LOCATION))
    assert type(error) is kind and error.exit_code == code
    assert hint_part in (error.hint or "")


# --- push ---------------------------------------------------------------------------------------


def _push_stream(digest: str = DIGEST) -> list[dict]:
    return [
        {"status": "The push refers to repository [127.0.0.1:5000/team/x]"},
        {"status": "Preparing", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": "Preparing", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
        {"status": "Layer already exists", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": "Pushing", "progressDetail": {"current": 512, "total": 4096}, "id": "bbbbbbbbbbbb"},
        {"status": "Pushing", "progressDetail": {"current": 4096, "total": 4096}, "id": "bbbbbbbbbbbb"},
        {"status": "Pushed", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
        {"status": f"1: digest: {digest} size: 528"},
        {"progressDetail": {}, "aux": {"Tag": "1", "Digest": digest, "Size": 528}},
    ]


def _image_client(**knobs: object) -> FakeClient:
    from tests.unit.test_record_snapshot import make_spec

    labels = {"io.envkit.spec-digest": make_spec().digest()}
    image = FakeImage(IMAGE_ID, tags=["envkit/x:1"], labels=labels)
    return FakeClient({"envkit/x:1": image}, **knobs)  # type: ignore[arg-type]


def test_push_returns_the_digest_counts_what_was_sent_and_remembers_the_location() -> None:
    client = _image_client(push_stream=_push_stream())
    client.images.images["envkit/x:1"].tags.append("127.0.0.1:5000/team/x:1")  # as the engine lists it
    result = push_image(client, "envkit/x:1", "127.0.0.1:5000/team/x:1",
                        credentials=Credentials("ci", "pw"))
    assert result.location == LOCATION and result.digest == DIGEST
    assert (result.layers_pushed, result.layers_present, result.bytes_pushed) == (1, 1, 4096)
    assert client.api.pushed == [("127.0.0.1:5000/team/x", "1", {"username": "ci", "password": "pw"})]
    assert registry.known_locations(IMAGE_ID) == [LOCATION]
    assert client.api.tagged[0] == (IMAGE_ID, "127.0.0.1:5000/team/x", "1")
    # the tag the push needed is gone again: a later snapshot records the image's own tags only
    assert "127.0.0.1:5000/team/x:1" not in client.images.images and "envkit/x:1" in client.images.images


def test_push_without_credentials_leaves_auth_to_the_docker_config() -> None:
    client = _image_client(push_stream=_push_stream())
    push_image(client, "envkit/x:1", "127.0.0.1:5000/team/x")
    assert client.api.pushed == [("127.0.0.1:5000/team/x", "latest", None)]


def test_refused_push_raises_and_takes_its_local_tag_back() -> None:
    stream = [{"status": "Preparing", "id": "a"},
              {"errorDetail": {"message": "unauthorized: authentication required"},
               "error": "unauthorized: authentication required"}]
    client = _image_client(push_stream=stream)
    client.images.images["envkit/x:1"].tags.append("127.0.0.1:5000/team/x:1")
    with pytest.raises(RegistryError, match="refused the credentials"):
        push_image(client, "envkit/x:1", "127.0.0.1:5000/team/x:1")
    assert "127.0.0.1:5000/team/x:1" not in client.images.images
    assert "envkit/x:1" in client.images.images
    assert registry.known_locations(IMAGE_ID) == []


def test_interrupted_push_puts_a_moved_tag_back_where_it_was() -> None:
    client = _image_client(push_stream=_push_stream(), push_interrupt_after=4)
    client.images.images["127.0.0.1:5000/team/x:1"] = client.images.images[OTHER_ID] = FakeImage(OTHER_ID)
    with pytest.raises(KeyboardInterrupt):
        push_image(client, "envkit/x:1", "127.0.0.1:5000/team/x:1")
    assert client.images.get("127.0.0.1:5000/team/x:1").id == OTHER_ID
    assert registry.known_locations(IMAGE_ID) == []


def test_push_to_a_digest_or_of_a_missing_image_is_a_usage_error() -> None:
    client = _image_client(push_stream=_push_stream())
    with pytest.raises(UsageError, match="digest"):
        push_image(client, "envkit/x:1", LOCATION)
    with pytest.raises(UsageError, match="not found"):
        push_image(client, "envkit/absent:1", "127.0.0.1:5000/team/x:1")


def test_push_that_ends_without_a_digest_is_refused() -> None:
    client = _image_client(push_stream=_push_stream()[:-1])
    with pytest.raises(RegistryError, match="without a digest"):
        push_image(client, "envkit/x:1", "127.0.0.1:5000/team/x:1")


# --- pull ---------------------------------------------------------------------------------------

_PULL_STREAM = [
    {"status": "Pulling from team/x", "id": LOCATION},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Downloading", "progressDetail": {"current": 100, "total": 300}, "id": "bbbbbbbbbbbb"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": "Pull complete", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    {"status": f"Digest: {DIGEST}"},
]


def test_pull_by_digest_checks_the_id_before_it_tags() -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(IMAGE_ID))
    result = pull_image(client, LOCATION, expected_id=IMAGE_ID, tag="envkit/x:1")
    assert result.image_id == IMAGE_ID and result.tag == "envkit/x:1" and result.bytes_downloaded == 300
    assert client.api.pulled == [("127.0.0.1:5000/team/x", DIGEST, None)]
    assert client.api.tagged == [(IMAGE_ID, "envkit/x", "1")]
    assert registry.known_locations(IMAGE_ID) == [LOCATION]


def test_pulled_image_of_another_id_is_refused_untagged_and_removed() -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(OTHER_ID))
    client.images.images["envkit/x:1"] = FakeImage("sha256:" + "9" * 64)
    with pytest.raises(IntegrityError, match="not the manifest's") as info:
        pull_image(client, LOCATION, expected_id=IMAGE_ID, tag="envkit/x:1")
    assert info.value.exit_code == 5
    assert client.api.tagged == []
    assert client.images.get("envkit/x:1").id == "sha256:" + "9" * 64
    assert OTHER_ID in client.api.removed_images
    assert registry.known_locations(OTHER_ID) == []


def test_corrupted_blob_refuses_the_pull_and_tags_nothing() -> None:
    message = "filesystem layer verification failed for digest sha256:" + "b" * 64
    stream = [*_PULL_STREAM[:3], {"errorDetail": {"message": message}, "error": message}]
    client = FakeClient(pull_stream=stream, pulled_image=FakeImage(IMAGE_ID))
    with pytest.raises(IntegrityError):
        pull_image(client, LOCATION, expected_id=IMAGE_ID, tag="envkit/x:1")
    assert client.api.tagged == [] and "envkit/x:1" not in client.images.images


def test_interrupted_pull_tags_nothing() -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pull_interrupt_after=2, pulled_image=FakeImage(IMAGE_ID))
    with pytest.raises(KeyboardInterrupt):
        pull_image(client, LOCATION, expected_id=IMAGE_ID, tag="envkit/x:1")
    assert client.api.tagged == [] and "envkit/x:1" not in client.images.images


def test_unreachable_registry_is_exit_6() -> None:
    error = docker.errors.APIError("500", explanation='Get "http://127.0.0.1:9/v2/": dial tcp: connection refused')
    client = FakeClient(pull_error=error)
    with pytest.raises(NetworkError, match="unreachable") as info:
        pull_image(client, "127.0.0.1:9/team/x:1")
    assert info.value.exit_code == 6


def test_proving_an_id_needs_a_digest() -> None:
    with pytest.raises(UsageError, match="by digest"):
        pull_image(FakeClient(), "127.0.0.1:5000/team/x:1", expected_id=IMAGE_ID)


def test_a_damaged_locations_file_starts_afresh(_state: Path) -> None:
    path = registry.locations_file()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert registry.known_locations(IMAGE_ID) == []
    registry.remember_location(IMAGE_ID, LOCATION)
    assert json.loads(path.read_text()) == {"images": {IMAGE_ID: [LOCATION]}}


# --- manifests name locations -------------------------------------------------------------------


def _located(*locations: str):  # type: ignore[no-untyped-def]
    manifest = _manifest()
    image = manifest.image.model_copy(update={"locations": list(locations)})
    return seal_manifest(manifest.model_copy(update={"image": image}))


def test_locations_round_trip_and_are_left_out_when_there_are_none(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_manifest(path, _located(LOCATION))
    assert read_manifest(path).image.locations == [LOCATION]
    write_manifest(path, _manifest())
    assert "locations" not in json.loads(path.read_text())["image"]


def test_a_schema_2_manifest_without_locations_reads_and_keeps_its_digest(tmp_path: Path) -> None:
    data = _manifest().model_dump(mode="json")
    data["schema_version"] = 2
    data["digest"] = content_digest(data)
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(data))
    manifest = read_manifest(path)
    assert manifest.image.locations == [] and manifest.digest == data["digest"]
    assert seal_manifest(manifest).digest == data["digest"]


@pytest.mark.parametrize("bad", ["127.0.0.1:5000/team/x:1", "team/x@sha256:short", "x@" + DIGEST + " ; rm"])
def test_a_location_outside_the_grammar_is_refused(tmp_path: Path, bad: str) -> None:
    data = _manifest().model_dump(mode="json")
    data["image"]["locations"] = [bad]
    data["digest"] = content_digest(data)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="locations"):
        read_manifest(path)


# --- restore ------------------------------------------------------------------------------------


def test_fetch_tries_every_location_and_says_why_none_answered() -> None:
    error = docker.errors.APIError("500", explanation="dial tcp 127.0.0.1:5000: connect: connection refused")
    client = FakeClient(pull_error=error)
    other = f"127.0.0.1:5001/team/x@{DIGEST}"
    result, attempts = fetch_manifest_image(client, _located(LOCATION, other), tag=None)
    assert result is None
    assert [a.location for a in attempts] == [LOCATION, other]
    assert all("unreachable" in a.reason for a in attempts)


def test_fetch_tags_the_pulled_image_with_the_callers_tag_only() -> None:
    """The tag comes from --tag or the spec (chosen by restore), never from the manifest's tags."""
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(IMAGE_ID))
    result, attempts = fetch_manifest_image(client, _located(LOCATION), tag="envkit/x:1")
    assert result is not None and attempts == []
    assert result.to_json()["fetched_from"] == LOCATION and result.to_json()["built"] is False
    assert client.api.tagged == [(IMAGE_ID, "envkit/x", "1")]
    untagged = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(IMAGE_ID))
    result, _ = fetch_manifest_image(untagged, _located(LOCATION), tag=None)
    assert result is not None and untagged.api.tagged == []


def _restore(monkeypatch: pytest.MonkeyPatch, client: FakeClient, tmp_path: Path, *args: str,
             manifest=None) -> int:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.json"
    write_manifest(path, manifest if manifest is not None else _located(LOCATION))
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)

    def no_build(*_a: object, **_k: object):  # type: ignore[no-untyped-def]
        raise AssertionError("restore built although the registry had the image")
        yield  # pragma: no cover

    monkeypatch.setattr("envkit.record.snapshot.restore_events", no_build)
    return cli_module.main(["restore", str(path), *args])


def test_restore_pulls_by_digest_and_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(IMAGE_ID))
    assert _restore(monkeypatch, client, tmp_path, "--from-registry", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical"] is True and out["fetched_from"] == LOCATION and out["built"] is False


def test_restore_refuses_a_pulled_image_that_is_not_the_manifests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(OTHER_ID))
    assert _restore(monkeypatch, client, tmp_path) == 5
    assert client.api.tagged == []


def test_restore_from_registry_with_no_answer_exits_6_naming_what_it_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = docker.errors.APIError("500", explanation="dial tcp 127.0.0.1:5000: connect: connection refused")
    assert _restore(monkeypatch, FakeClient(pull_error=error), tmp_path, "--from-registry") == 6
    assert LOCATION in capsys.readouterr().err.replace("\n", "")


def test_restore_from_registry_without_locations_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _restore(monkeypatch, FakeClient(), tmp_path, "--from-registry", manifest=_manifest()) == 2


def test_restore_flags_that_contradict_each_other(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _restore(monkeypatch, FakeClient(), tmp_path, "--from-registry", "--rebuild") == 2


def test_restore_rebuild_never_pulls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pulled_image=FakeImage(IMAGE_ID))
    # the stub build raises AssertionError: an internal error (1), after no pull was tried
    assert _restore(monkeypatch, client, tmp_path, "--rebuild") == 1
    assert client.api.pulled == []


def test_password_comes_from_stdin_never_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _image_client(push_stream=_push_stream())
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("pw-from-stdin\n"))
    assert cli_module.main(["push", "envkit/x:1", "127.0.0.1:5000/team/x:1",
                            "--username", "ci", "--password-stdin"]) == 0
    assert client.api.pushed[0][2] == {"username": "ci", "password": "pw-from-stdin"}
    assert cli_module.main(["push", "envkit/x:1", "127.0.0.1:5000/team/x:1", "--username", "ci"]) == 2


def test_snapshot_writes_the_locations_this_host_pushed_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.record import snapshot as snapshot_module
    from tests.unit.test_record_snapshot import make_spec

    monkeypatch.setattr(snapshot_module, "collect_packages", lambda *_: {"python": {}, "apt": {}})
    monkeypatch.setattr(snapshot_module, "_spec_and_lock_from_labels",
                        lambda _labels: (make_spec(), None, "images/x/1.yaml"))
    client = _image_client()
    assert snapshot_module.snapshot(client, IMAGE_ID).image.locations == []
    registry.remember_location(IMAGE_ID, LOCATION)
    registry.remember_location(OTHER_ID, f"127.0.0.1:5000/team/y@{DIGEST}")
    manifest = snapshot_module.snapshot(client, IMAGE_ID)
    assert manifest.image.locations == [LOCATION]
    assert manifest.digest == seal_manifest(manifest).digest


def test_restore_falls_back_to_a_rebuild_and_says_which_locations_failed_and_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import dataclass

    from envkit.events import done

    @dataclass
    class Built:
        image_id: str = IMAGE_ID
        tag: str = "envkit/x:1"

        def to_json(self) -> dict[str, str]:
            return {"image_id": self.image_id, "tag": self.tag}

    error = docker.errors.APIError("500", explanation="dial tcp 127.0.0.1:5000: connect: connection refused")
    path = tmp_path / "m.json"
    write_manifest(path, _located(LOCATION))
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: FakeClient(pull_error=error))
    monkeypatch.setattr("envkit.record.snapshot.restore_events", lambda *a, **k: iter([done("built", Built())]))
    assert cli_module.main(["restore", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "did not answer" in err and "unreachable" in err and "rebuilding" in err


def test_interrupted_pull_exits_130_with_nothing_tagged(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(pull_stream=_PULL_STREAM, pull_interrupt_after=3, pulled_image=FakeImage(IMAGE_ID))
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    assert cli_module.main(["pull", LOCATION, "--expect-id", IMAGE_ID, "--tag", "envkit/x:1"]) == 130
    assert client.api.tagged == [] and "envkit/x:1" not in client.images.images


def test_interrupted_push_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _image_client(push_stream=_push_stream(), push_interrupt_after=5)
    monkeypatch.setattr("envkit.engine.client.get_client", lambda *a, **k: client)
    assert cli_module.main(["push", "envkit/x:1", "127.0.0.1:5000/team/x:1"]) == 130
    assert registry.known_locations(IMAGE_ID) == []

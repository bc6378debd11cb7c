"""The one stand-in for docker.DockerClient in unit tests.

It holds just enough of the engine for the code under test: images by reference, containers that
record what was put into them, and the low-level API calls envkit makes (inspect, save, load,
tag, build, remove). Faults are injected through the constructor's knobs, never by subclassing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import docker.errors
import requests.exceptions


class FakeImage:
    def __init__(
        self,
        id: str = "sha256:" + "1" * 64,  # noqa: A002 - mirrors docker's Image.id
        *,
        labels: Mapping[str, str] | None = None,
        user: str = "",
        tags: Iterable[str] = (),
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.labels = dict(labels or {})
        self.tags = list(tags)
        self.attrs: dict[str, Any] = {
            "Id": id,
            "RepoTags": self.tags,
            "Config": {"User": user, "Labels": self.labels},
            **(attrs or {}),
        }


class FakeImages:
    """`client.images`: images by reference; `default` answers any reference not listed."""

    def __init__(self, images: Mapping[str, FakeImage] | None = None, default: FakeImage | None = None) -> None:
        self.images = dict(images or {})
        self.default = default

    def find(self, ref: str) -> FakeImage | None:
        if ref in self.images:
            return self.images[ref]
        for image in self.images.values():
            if image.id == ref:
                return image
        return self.default

    def get(self, ref: str) -> FakeImage:
        image = self.find(ref)
        if image is None:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return image


class FakeContainer:
    def __init__(
        self,
        name: str = "",
        kwargs: dict[str, Any] | None = None,
        *,
        owner: FakeClient | None = None,
        command: list[str] | None = None,
        running: bool = True,
    ) -> None:
        self.name = name
        self.id = f"id-{name}"
        self.owner = owner
        self.kwargs = kwargs or {}
        self.command = list(command or self.kwargs.get("command") or [])
        self.script = next((part.rsplit("/", 1)[-1] for part in self.command if part.endswith(".py")), "")
        self.archives: list[tuple[str, bytes]] = []
        self.started = self.stopped = self.removed = False
        labels = self.kwargs.get("labels", {"io.envkit.managed": "true"})
        ports = {
            inner: [{"HostIp": host, "HostPort": str(port or 40000 + i)}]
            for i, (inner, (host, port)) in enumerate(self.kwargs.get("ports", {}).items())
        }
        self.attrs: dict[str, Any] = {
            "Config": {"Labels": labels},
            "State": {"Running": running, "Status": "running" if running else "exited", "ExitCode": 3},
            "NetworkSettings": {"Ports": ports},
        }
        self.status = self.attrs["State"]["Status"]

    def put_archive(self, path: str, data: bytes) -> bool:
        self.archives.append((path, data))
        return True

    def start(self) -> None:
        if self.owner is not None and self.owner.start_error:
            raise docker.errors.APIError("500 Server Error", explanation=self.owner.start_error)
        self.started = True

    def reload(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if self.owner is not None and self.script in self.owner.hang:
            raise requests.exceptions.ReadTimeout("read timed out")
        return {"StatusCode": 0}

    def kill(self) -> None:
        if self.owner is not None:
            self.owner.killed.append(self.script)

    def logs(self, stdout: bool = True, stderr: bool = True, **_: Any) -> bytes:
        if self.owner is None:
            return b""
        outputs = self.owner.outputs
        if "torch.distributed.run" in self.command and self.owner.ddp_outputs is not None:
            outputs = self.owner.ddp_outputs
        out, err = outputs.get(self.script, (self.owner.logs, ""))
        return ((out if stdout else "") + (err if stderr else "")).encode()

    def stop(self, timeout: int = 10) -> None:
        self.stopped = True

    def remove(self, force: bool = False) -> None:
        self.removed = True


class FakeContainers:
    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner
        self.created: list[FakeContainer] = []
        self.existing: list[FakeContainer] = []

    def create(self, image: str, command: list[str] | None = None, **kwargs: Any) -> FakeContainer:
        if command is not None:
            kwargs["command"] = command
        container = FakeContainer(kwargs.get("name", ""), kwargs, owner=self.owner, command=command)
        self.created.append(container)
        return container

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[FakeContainer]:  # noqa: A002
        found = self.existing + self.created
        if filters and "label" in filters:
            key, _, value = filters["label"].partition("=")
            found = [c for c in found if c.attrs["Config"]["Labels"].get(key) == value]
        return found


class FakeApi:
    """`client.api`: the low-level calls, each recording what it was asked."""

    def __init__(self, owner: FakeClient) -> None:
        self.owner = owner
        self.removed: list[str] = []
        self.tagged: list[tuple[str, str, str]] = []
        self.untagged: list[str] = []
        self.loaded = b""
        self.closed = False
        self.removed_images: list[str] = []
        self.pushed: list[tuple[str, str | None, Any]] = []
        self.pulled: list[tuple[str, str | None, Any]] = []

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return self.owner.images.get(ref).attrs

    def get_image(self, ref: str, chunk_size: int = 0) -> Iterator[bytes]:
        owner = self.owner
        for i, chunk in enumerate(owner.saved):
            if owner.save_fails_after is not None and i == owner.save_fails_after:
                assert owner.save_error is not None
                raise owner.save_error
            yield chunk

    def load_image(self, data: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        """Keep the archive; answer `load_messages`, or else hold the image it carries and say so."""
        self.loaded = b"".join(data)
        if self.owner.load_messages:
            yield from self.owner.load_messages
            return
        with tarfile.open(fileobj=io.BytesIO(self.loaded)) as archive:
            entry = json.loads(archive.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
            config = archive.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        layers = json.loads(config)["rootfs"]["diff_ids"]
        self.owner.images.images[image_id] = FakeImage(image_id, attrs={"RootFS": {"Layers": layers}})
        yield {"stream": f"Loaded image ID: {image_id}\n"}

    def images(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        return [{"Id": image.id} for image in self.owner.images.images.values()]

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        self.tagged.append((image, repository, tag or "latest"))
        self.owner.images.images[f"{repository}:{tag or 'latest'}"] = self.owner.images.get(image)
        return True

    def build(self, **kwargs: Any) -> Any:
        api = self
        owner = self.owner

        class Stream:
            def __iter__(self) -> Iterator[dict[str, Any]]:
                for index, chunk in enumerate(owner.build_stream):
                    if owner.build_interrupt_after is not None and index == owner.build_interrupt_after:
                        raise KeyboardInterrupt
                    yield chunk

            def close(self) -> None:
                api.closed = True

        return Stream()

    def remove_container(self, container_id: str, force: bool = False) -> None:
        self.removed.append(container_id)

    def remove_image(self, image: str, force: bool = False, noprune: bool = False) -> None:
        """Untag ``image`` if it is a tag; remove every reference to it if it is an ID."""
        self.removed_images.append(image)
        self.untagged.append(image)
        images = self.owner.images.images
        if image in images:
            del images[image]
            return
        for ref in [ref for ref, held in images.items() if held.id == image]:
            del images[ref]

    def push(self, repository: str, tag: str | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.pushed.append((repository, tag, kwargs.get("auth_config")))
        owner = self.owner
        for index, message in enumerate(owner.push_stream):
            if owner.push_interrupt_after is not None and index == owner.push_interrupt_after:
                raise KeyboardInterrupt
            yield message

    def pull(self, repository: str, tag: str | None = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Answer ``pull_stream``; at its end the engine holds ``pulled_image`` under repo@digest."""
        self.pulled.append((repository, tag, kwargs.get("auth_config")))
        owner = self.owner
        if owner.pull_error is not None:
            raise owner.pull_error
        for index, message in enumerate(owner.pull_stream):
            if owner.pull_interrupt_after is not None and index == owner.pull_interrupt_after:
                raise KeyboardInterrupt
            yield message
        if owner.pulled_image is not None and not any("error" in m for m in owner.pull_stream):
            owner.images.images[f"{repository}@{tag}" if tag and tag.startswith("sha256:")
                                else f"{repository}:{tag or 'latest'}"] = owner.pulled_image


class FakeClient:
    """A docker.DockerClient stand-in.

    Knobs: `images` by reference and a `default_image` for any other reference; `runtimes` for
    `info()`; per-script container `outputs` (stdout, stderr), `ddp_outputs` for containers that
    run torchrun, and `logs` for the rest;
    `start_error` (containers refuse to start), `hang` (scripts whose wait times out); `saved`
    (what `docker save` streams) with `save_fails_after`/`save_error`; `load_messages` (what
    `docker load` answers); `build_stream` with `build_interrupt_after`; `push_stream` with
    `push_interrupt_after`; `pull_stream` with `pull_interrupt_after` or `pull_error`, after which
    the engine holds `pulled_image`.
    """

    def __init__(
        self,
        images: Mapping[str, FakeImage] | None = None,
        *,
        default_image: FakeImage | None = None,
        runtimes: dict[str, Any] | None = None,
        outputs: dict[str, tuple[str, str]] | None = None,
        ddp_outputs: dict[str, tuple[str, str]] | None = None,
        logs: str = "",
        start_error: str | None = None,
        hang: tuple[str, ...] = (),
        saved: Iterable[bytes] = (),
        save_fails_after: int | None = None,
        save_error: BaseException | None = None,
        load_messages: Iterable[dict[str, Any]] = (),
        build_stream: Iterable[dict[str, Any]] = (),
        build_interrupt_after: int | None = None,
        push_stream: Iterable[dict[str, Any]] = (),
        push_interrupt_after: int | None = None,
        pull_stream: Iterable[dict[str, Any]] = (),
        pull_interrupt_after: int | None = None,
        pull_error: BaseException | None = None,
        pulled_image: FakeImage | None = None,
    ) -> None:
        self.images = FakeImages(images, default_image)
        self.containers = FakeContainers(self)
        self.api = FakeApi(self)
        self.runtimes = runtimes if runtimes is not None else {"runc": {}}
        self.outputs = outputs or {}
        self.ddp_outputs = ddp_outputs
        self.logs = logs
        self.start_error = start_error
        self.hang = hang
        self.killed: list[str] = []
        self.saved = list(saved)
        self.save_fails_after = save_fails_after
        self.save_error = save_error
        self.load_messages = list(load_messages)
        self.build_stream = list(build_stream)
        self.build_interrupt_after = build_interrupt_after
        self.push_stream = list(push_stream)
        self.push_interrupt_after = push_interrupt_after
        self.pull_stream = list(pull_stream)
        self.pull_interrupt_after = pull_interrupt_after
        self.pull_error = pull_error
        self.pulled_image = pulled_image

    @property
    def created(self) -> list[FakeContainer]:
        return self.containers.created

    def info(self) -> dict[str, Any]:
        return {"Runtimes": self.runtimes, "MemTotal": 24 * 1024**3}

    def version(self) -> dict[str, Any]:
        return {"Version": "24.0.7", "ApiVersion": "1.43"}

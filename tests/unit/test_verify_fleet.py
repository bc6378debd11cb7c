"""verify --host: host forms, the image brought to each host, hosts in parallel, one failing host,
the exit-code order, the JSON and the summary table; with the one fake Docker client."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from rich.console import Console

from envkit.cli.app import main
from envkit.cli.verify import summary_table
from envkit.engine.client import EngineHost, context_endpoint, parse_host, parse_hosts
from envkit.engine.registry import remember_location
from envkit.errors import EngineUnreachable, EnvkitError, IntegrityError, UsageError, VerificationFailed
from envkit.events import Event
from envkit.verify import fleet, runner
from tests.fakes import FakeClient, FakeImage
from tests.tarfiles import tar_of
from tests.unit.test_verify_runner import LABELS, bench_doc, outputs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"
TAG = "envkit/pytorch-cuda:2.8"
LOCATION_REPO = "registry.example.com:5000/team/pytorch-cuda"


def saved_image() -> tuple[str, bytes]:
    """A one-layer docker-archive as `docker save` of TAG sends it, and its image ID."""
    layer = tar_of({"hello.txt": b"hi\n"})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": LABELS},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = [{"Config": image_id[7:] + ".json", "RepoTags": [TAG], "Layers": ["l/layer.tar"]}]
    archive = tar_of([("manifest.json", json.dumps(manifest).encode()), (image_id[7:] + ".json", config),
                      ("l", None), ("l/layer.tar", layer)])
    return image_id, archive


IMAGE_ID, ARCHIVE = saved_image()


def local_engine() -> FakeClient:
    image = FakeImage(IMAGE_ID, labels=LABELS, tags=[TAG])
    return FakeClient({TAG: image}, saved=[ARCHIVE[i : i + 4096] for i in range(0, len(ARCHIVE), 4096)])


def gpu_engine(*, has_image: bool = True, bench: dict[str, Any] | None = None, **knobs: Any) -> FakeClient:
    """A host with A100s and the NVIDIA runtime: nvidia-smi (in a container) prints the fixture."""
    images = {TAG: FakeImage(IMAGE_ID, labels=LABELS, tags=[TAG])} if has_image else {}
    return FakeClient(
        images, runtimes={"runc": {}, "nvidia": {}},
        outputs=outputs(bench=bench), logs=(FIXTURES / "a100.nvidia-smi.csv").read_text(), **knobs,
    )


def hosts(*names: str) -> list[EngineHost]:
    return [EngineHost(name, f"ssh://{name}") for name in names]


def run_fleet(
    engines: dict[str, Any], *, cpu: bool = False, local: FakeClient | None = None, show: Any = None
) -> fleet.FleetReport:
    def factory(host: EngineHost) -> Any:
        engine = engines[host.name]
        if isinstance(engine, BaseException):
            raise engine
        return engine() if callable(engine) and not isinstance(engine, FakeClient) else engine

    options = runner.VerifyOptions(target=TAG, cpu=cpu)
    source = local or local_engine()
    return fleet.verify_fleet(
        options, hosts(*engines), local_factory=lambda: source, client_factory=factory, show=show
    )


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVKIT_STATE_DIR", str(tmp_path / "state"))


# --------------------------------------------------------------------------- host forms


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("ssh://ops@gpu1.example.org", "ssh://ops@gpu1.example.org"),
        ("ssh://ops@10.0.0.7:2222", "ssh://ops@10.0.0.7:2222"),
        ("ssh://gpu2", "ssh://gpu2"),
        ("ssh://root@[fd00::7]:22", "ssh://root@[fd00::7]:22"),
        ("unix:///run/docker2.sock", "unix:///run/docker2.sock"),
        ("tcp://10.1.2.3:2376", "tcp://10.1.2.3:2376"),
        ("tcp://gpu3/", "tcp://gpu3"),
    ],
)
def test_host_urls_are_accepted(text: str, url: str) -> None:
    host = parse_host(text)
    assert (host.name, host.url, host.context) == (text, url, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://gpu1", "unknown scheme http:"),
        ("ssh:/gpu1", "neither an engine URL nor a context name"),
        ("ssh://ops:secret@gpu1", "a password never goes in --host"),
        ("ssh://gpu1:0", "port '0'"),
        ("ssh://gpu1:70000", "port '70000'"),
        ("ssh://gpu1:", "port ''"),
        ("ssh://gpu1/var/run/docker.sock", "no path"),
        ("ssh://gpu1?x=1", "no path, query"),
        ("ssh://-oProxyCommand=sh", "not a host name"),
        ("ssh://-oProxyCommand=sh@gpu1", "not a user name"),
        ("ssh://-gpu1", "not a host name"),
        ("ssh://fd00::7", "IPv6 address in brackets"),
        ("ssh://[fd00::zz]", "not an IPv6 address"),
        ("unix://run/docker.sock", "absolute socket path"),
        ("unix:///run/../etc/x.sock", "absolute socket path"),
        ("tcp://ops@gpu1:2375", "tcp:// takes no user"),
        ("ssh://gpu 1", "spaces or control characters"),
        ("ssh://gpu1\x1b[31m", "spaces or control characters"),
        ("a context", "neither an engine URL nor a context name"),
    ],
)
def test_bad_host_forms_are_usage_errors(text: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_host(text)
    assert problem in caught.value.message
    assert caught.value.exit_code == 2
    assert "ssh://[user@]host[:port]" in (caught.value.hint or "") or "context" in caught.value.message


def _context(config: Path, name: str, meta: dict[str, Any] | bytes) -> Path:
    directory = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    directory.mkdir(parents=True)
    (directory / "meta.json").write_bytes(meta if isinstance(meta, bytes) else json.dumps(meta).encode())
    return directory


def test_context_names_resolve_through_the_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _context(tmp_path, "gpu-west", {"Name": "gpu-west", "Endpoints": {"docker": {"Host": "ssh://ops@gpu7:2200"}}})
    _context(tmp_path, "tls-box", {"Name": "tls-box",
                                   "Endpoints": {"docker": {"Host": "tcp://gpu8:2376", "SkipTLSVerify": False}}})
    tls_dir = tmp_path / "contexts" / "tls" / hashlib.sha256(b"tls-box").hexdigest() / "docker"
    tls_dir.mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tls_dir / name).write_text("pem")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    west = parse_host("gpu-west")
    assert (west.name, west.url, west.context, west.tls) == ("gpu-west", "ssh://ops@gpu7:2200", "gpu-west", None)
    box = parse_host("tls-box")
    assert box.url == "tcp://gpu8:2376" and box.tls is not None
    assert (box.tls.ca, box.tls.cert, box.tls.key, box.tls.verify) == (
        str(tls_dir / "ca.pem"), str(tls_dir / "cert.pem"), str(tls_dir / "key.pem"), True)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    assert parse_host("default").url == "unix:///run/other.sock"


def test_unknown_or_broken_contexts_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no Docker context of that name"):
        context_endpoint("nowhere", tmp_path)
    _context(tmp_path, "empty", {"Name": "empty", "Endpoints": {}})
    with pytest.raises(UsageError, match=r"names no docker endpoint \(Endpoints.docker.Host\)"):
        context_endpoint("empty", tmp_path)
    _context(tmp_path, "garbage", b"\xff{not json")
    with pytest.raises(UsageError, match="names no docker endpoint"):
        context_endpoint("garbage", tmp_path)
    _context(tmp_path, "evil", {"Endpoints": {"docker": {"Host": "ssh://-oProxyCommand=touch@x"}}})
    with pytest.raises(UsageError, match="not a user name"):
        context_endpoint("evil", tmp_path)


def test_the_same_engine_twice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="names the same engine as 'ssh://gpu1'"):
        parse_hosts(["ssh://gpu1", "ssh://gpu2", "ssh://gpu1/"])


def test_cli_refuses_a_bad_host_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []
    monkeypatch.setattr(fleet, "verify_fleet", lambda *a, **k: touched.append("fleet"))
    monkeypatch.setattr(fleet, "local_source", lambda *a, **k: touched.append("engine"))
    assert main(["verify", TAG, "--cpu", "--host", "ssh://gpu1", "--host", "http://gpu2"]) == 2
    assert main(["verify", "--native", "--host", "ssh://gpu1"]) == 2
    assert touched == []


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("codes", "worst"),
    [
        ([], 0),
        ([0, 0], 0),
        ([0, 3], 3),
        ([3, 8], 8),
        ([7, 8, 3], 8),
        ([8, 5], 5),
        ([6, 4, 3, 2], 6),
        ([5, 1, 8], 1),
        ([9, 5], 9),  # a code outside the order ranks just below a bug
    ],
)
def test_worst_exit_code_follows_the_documented_order(codes: list[int], worst: int) -> None:
    assert fleet.worst_exit_code(codes) == worst


# --------------------------------------------------------------------------- the fleet


def test_hosts_run_in_parallel_with_one_report_each() -> None:
    barrier = threading.Barrier(2, timeout=10)  # each host waits for the other: serial runs would break it
    one, two = gpu_engine(), gpu_engine()

    def meet(client: FakeClient) -> Any:
        return lambda: (barrier.wait(), client)[1]

    report = run_fleet({"gpu1": meet(one), "gpu2": meet(two)})
    assert report.exit_code == 0
    assert [h.host for h in report.hosts] == ["gpu1", "gpu2"]
    for host, engine in zip(report.hosts, (one, two), strict=True):
        assert host.status == "pass" and host.exit_code == 0
        assert host.report is not None and host.report.verdict is not None
        assert host.report.target.requested == TAG and host.report.target.image_id == IMAGE_ID
        assert host.gpu == "NVIDIA H100 80GB HBM3" and host.driver == "570.133.20"
        assert host.images_per_s == {"resnet50": 3000.0, "yolo": 900.0}
        assert host.transfer is not None and host.transfer.method == "present"
        # Each host ran its own preflight (nvidia-smi in a container there), probe and benchmark.
        scripts = [c.script or c.kwargs["entrypoint"][0] for c in engine.created]
        assert scripts == ["nvidia-smi", "probe.py", "bench.py"]
        assert all(c.removed for c in engine.created)
        checks = {c.name: c for c in host.report.preflight}
        assert checks["nvidia driver"].status == "PASS" and "570.133.20" in checks["nvidia driver"].reason
        assert checks["disk"].status == "WARN" and "another machine" in checks["disk"].reason


def test_one_unreachable_host_is_reported_and_the_others_go_on() -> None:
    down = EngineUnreachable("no Docker engine answers at ssh://gpu2: connection refused", hint="check ssh")
    report = run_fleet({"gpu1": gpu_engine(), "gpu2": down, "gpu3": gpu_engine()})
    assert [h.exit_code for h in report.hosts] == [0, 3, 0]
    assert report.exit_code == 3
    gpu2 = report.hosts[1]
    assert gpu2.status == "unreachable" and gpu2.report is None and gpu2.transfer is None
    assert gpu2.error is not None and "connection refused" in gpu2.error.message
    with pytest.raises(EngineUnreachable) as caught:
        fleet.raise_for_fleet(report)
    assert caught.value.exit_code == 3
    assert "1 of 3 hosts failed (gpu2)" in caught.value.message and "connection refused" in caught.value.message
    assert caught.value.hint == "check ssh"


def test_a_slow_host_outranks_an_unreachable_one() -> None:
    slow = gpu_engine(bench=bench_doc(300.0))  # far below the H100 reference
    report = run_fleet({"gpu1": slow, "gpu2": EngineUnreachable("down"), "gpu3": gpu_engine()})
    assert [h.status for h in report.hosts] == ["failed", "unreachable", "pass"]
    assert report.exit_code == 8
    with pytest.raises(VerificationFailed) as caught:
        fleet.raise_for_fleet(report)
    assert "2 of 3 hosts failed (gpu1, gpu2); worst: gpu1" in caught.value.message


def test_a_bug_on_one_host_is_exit_1_for_that_host_only() -> None:
    report = run_fleet({"gpu1": RuntimeError("boom"), "gpu2": gpu_engine()})
    assert [h.exit_code for h in report.hosts] == [1, 0]
    assert report.hosts[0].error is not None and report.hosts[0].error.message == "RuntimeError: boom"
    with pytest.raises(EnvkitError) as caught:
        fleet.raise_for_fleet(report)
    assert type(caught.value) is EnvkitError and caught.value.exit_code == 1


def test_progress_events_carry_their_host() -> None:
    seen: list[Event] = []
    lock = threading.Lock()

    def show(event: Event) -> None:
        with lock:
            seen.append(event)

    run_fleet({"gpu1": gpu_engine(), "gpu2": EngineUnreachable("down")}, show=show)
    by_host = {(e.data["host"], e.message) for e in seen}
    assert ("gpu1", "image: present, image " + IMAGE_ID[7:19] + " already there") in by_host
    assert ("gpu2", "connecting to ssh://gpu2") in by_host
    assert any(host == "gpu1" and message.startswith("pass: ") for host, message in by_host)


def test_an_image_missing_here_is_a_usage_error_before_any_host() -> None:
    touched: list[str] = []
    empty = FakeClient({})
    with pytest.raises(UsageError, match="not on this machine's engine"):
        fleet.verify_fleet(runner.VerifyOptions(target=TAG, cpu=True), hosts("gpu1"),
                           local_factory=lambda: empty, client_factory=lambda h: touched.append(h.name))
    assert touched == []


# --------------------------------------------------------------------------- the image's way there


def test_a_host_without_the_image_gets_it_streamed_with_its_id_checked() -> None:
    local, remote = local_engine(), gpu_engine(has_image=False)
    report = run_fleet({"gpu1": remote}, local=local)
    (host,) = report.hosts
    assert host.exit_code == 0
    assert host.transfer is not None and host.transfer.method == "stream"
    assert host.transfer.bytes == len(ARCHIVE) and "no registry location recorded" in host.transfer.detail
    assert remote.api.loaded == ARCHIVE  # docker save here, docker load there, byte for byte
    assert remote.images.find(IMAGE_ID) is not None


def test_a_stream_that_loads_another_image_is_an_integrity_failure() -> None:
    remote = gpu_engine(has_image=False, load_messages=[{"stream": "Loaded image ID: sha256:" + "9" * 64}])
    report = run_fleet({"gpu1": remote, "gpu2": gpu_engine()})
    assert [h.exit_code for h in report.hosts] == [IntegrityError.exit_code, 0]
    assert report.exit_code == 5 and report.hosts[0].report is None
    assert report.hosts[0].error is not None and "not " + IMAGE_ID in report.hosts[0].error.message


def test_a_recorded_location_is_pulled_by_digest() -> None:
    location = f"{LOCATION_REPO}@sha256:{'7' * 64}"
    remember_location(IMAGE_ID, location)
    pulled = FakeImage(IMAGE_ID, labels=LABELS)
    remote = gpu_engine(has_image=False, pulled_image=pulled, pull_stream=[{"status": "Downloaded"}])
    report = run_fleet({"gpu1": remote})
    (host,) = report.hosts
    assert host.exit_code == 0
    assert host.transfer is not None and (host.transfer.method, host.transfer.location) == ("pull", location)
    assert remote.api.pulled[0][:2] == (LOCATION_REPO, "sha256:" + "7" * 64)
    assert (IMAGE_ID, "envkit/pytorch-cuda", "2.8") in remote.api.tagged
    assert remote.api.loaded == b""  # nothing streamed


def test_a_location_that_does_not_answer_falls_back_to_the_stream() -> None:
    location = f"{LOCATION_REPO}@sha256:{'7' * 64}"
    remember_location(IMAGE_ID, location)
    refused = docker.errors.APIError("500", explanation="dial tcp 10.0.0.9:5000: connection refused")
    remote = gpu_engine(has_image=False, pull_error=refused)
    report = run_fleet({"gpu1": remote})
    (host,) = report.hosts
    assert host.exit_code == 0 and host.transfer is not None
    assert host.transfer.method == "stream" and "no registry location answered" in host.transfer.detail
    assert host.transfer.failed_locations and "connection refused" in host.transfer.failed_locations[0]
    assert remote.api.loaded == ARCHIVE


def test_a_location_holding_another_image_stops_that_host_with_exit_5() -> None:
    location = f"{LOCATION_REPO}@sha256:{'7' * 64}"
    remember_location(IMAGE_ID, location)
    other = FakeImage("sha256:" + "8" * 64)
    remote = gpu_engine(has_image=False, pulled_image=other, pull_stream=[{"status": "Downloaded"}])
    report = run_fleet({"gpu1": remote})
    assert report.exit_code == 5 and report.hosts[0].status == "error"
    assert remote.api.loaded == b""  # a wrong image is reported, never streamed around


# --------------------------------------------------------------------------- JSON and the table


def test_json_holds_every_report() -> None:
    report = run_fleet({"gpu1": gpu_engine(), "gpu2": EngineUnreachable("down", hint="start it")})
    data = json.loads(report.to_json())
    assert data["schema"] == fleet.SCHEMA and data["exit_code"] == 3
    assert (data["target"], data["image"], data["image_id"]) == (TAG, TAG, IMAGE_ID)
    first, second = data["hosts"]
    assert set(first) == {"host", "engine", "status", "exit_code", "summary", "transfer", "gpu", "driver",
                          "images_per_s", "seconds", "error", "report"}
    assert first["report"]["verdict"]["status"] == "pass" and first["report"]["bench"]["workloads"]
    assert first["transfer"]["method"] == "present"
    assert second["report"] is None and second["status"] == "unreachable"
    assert second["error"] == {"label": "docker engine unreachable", "message": "down", "hint": "start it"}


def test_summary_table_puts_the_hosts_side_by_side() -> None:
    report = run_fleet({"gpu1": gpu_engine(), "gpu2": EngineUnreachable("no engine at ssh://gpu2")})
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(summary_table(report))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "host" in line and "verdict" in line)
    for column in ("image", "GPU", "driver", "resnet50 img/s", "yolo img/s"):
        assert column in header
    gpu1 = next(line for line in text.splitlines() if line.startswith("│ gpu1"))
    for cell in ("present", "NVIDIA H100 80GB HBM3", "570.133.20", "pass (0)", "3000.0", "900.0"):
        assert cell in gpu1
    gpu2 = next(line for line in text.splitlines() if line.startswith("│ gpu2"))
    assert "unreachable (3)" in gpu2
    assert "gpu2: exit 3, docker engine unreachable: no engine at ssh://gpu2" in text
    assert "exit code 3 (the worst host's)" in text


def test_cli_writes_the_fleet_json_and_exits_with_the_worst_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engines: dict[str, Any] = {"ssh://gpu1": gpu_engine(), "ssh://gpu2": EngineUnreachable("gone")}
    monkeypatch.setattr(fleet, "get_client", local_engine)

    def factory(host: EngineHost, **_: Any) -> Any:
        engine = engines[host.name]
        if isinstance(engine, BaseException):
            raise engine
        return engine

    monkeypatch.setattr(fleet, "host_client", factory)
    out = tmp_path / "fleet.json"
    code = main(["verify", TAG, "--host", "ssh://gpu1", "--host", "ssh://gpu2", "--json", str(out)])
    assert code == 3
    data = json.loads(out.read_text())
    assert [h["status"] for h in data["hosts"]] == ["pass", "unreachable"]
    err = capsys.readouterr().err
    assert "ssh://gpu1: image: present" in err
    assert "1 of 2 hosts failed (ssh://gpu2)" in err


def test_a_connection_lost_mid_run_is_an_unreachable_host_not_a_bug() -> None:
    import requests.exceptions

    class Dropping(FakeClient):
        def version(self) -> dict[str, Any]:
            raise requests.exceptions.ConnectionError("Connection aborted: channel closed")

    report = run_fleet({"gpu1": Dropping(), "gpu2": gpu_engine()})
    assert [h.exit_code for h in report.hosts] == [3, 0]
    gpu1 = report.hosts[0]
    assert gpu1.status == "unreachable"
    assert gpu1.error is not None and gpu1.error.message.startswith("lost the engine at ssh://gpu1: ")


def test_ssh_clients_keep_few_pooled_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """sshd allows 10 sessions per connection by default; each pooled HTTP connection is one."""
    from envkit.engine import client as engine_client

    made: dict[str, Any] = {}

    class Recording:
        def __init__(self, **kwargs: Any) -> None:
            made.update(kwargs)

        def ping(self) -> bool:
            return True

    monkeypatch.setattr(engine_client.docker, "DockerClient", Recording)
    engine_client.get_client("ssh://ops@gpu1:2222")
    assert made["base_url"] == "ssh://ops@gpu1:2222"
    assert made["num_pools"] * made["max_pool_size"] + 3 < 10
    made.clear()
    engine_client.get_client("unix:///run/docker2.sock")
    assert "num_pools" not in made

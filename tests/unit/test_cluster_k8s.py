"""`envkit k8s` and envkit/cluster/k8s.py: the manifests, their checks, and what a cluster would say.

Every manifest is validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships
(strict: no unknown fields), for each minor version from 1.29 on that it has, and parsed with the
official client's models. No cluster is involved.

tests/golden/k8s/ holds the YAML of each kind; ENVKIT_UPDATE_GOLDEN=1 rewrites them:

    ENVKIT_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_cluster_k8s.py -k golden
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes.client
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from envkit.cli import cluster as cli_cluster
from envkit.cli.app import main
from envkit.cluster import k8s
from envkit.engine.registry import remember_location
from envkit.incontainer.probe import PROBE_DIR, SCRIPT_FILES, WORKLOADS
from envkit.verify import runner
from tests.fakes import FakeClient, FakeImage

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "k8s"
DIGEST = "sha256:" + "ab" * 32
LOCATION = f"registry.example.org/ml/pytorch-cuda@{DIGEST}"
IMAGE_ID = "sha256:" + "1" * 64
TORCHRUN_JOB = ("pytorch-cuda:2.8", "--gpus", "8", "--", "torchrun", "--nproc-per-node", "8", "train.py")

# Every minor version kubernetes-validate bundles, from 1.29 on (it ships each one's schemas).
K8S_VERSIONS = sorted(
    {v for v in kv_utils.all_versions() if tuple(int(p) for p in v.split(".")[:2]) >= (1, 29)},
    key=lambda v: tuple(int(p) for p in v.split(".")),
)


@pytest.fixture(autouse=True)
def _no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Docker engine and an empty registry book, unless a test says otherwise."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("ENVKIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("ENVKIT_DEBUG", raising=False)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["k8s", *args])
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def _pushed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local image exists with IMAGE_ID and this host pushed it to LOCATION."""
    monkeypatch.setattr(cli_cluster, "_image_id", lambda tag: (IMAGE_ID, None))
    remember_location(IMAGE_ID, LOCATION)


# The manifests the golden files hold, as the CLI writes them.
CASES: dict[str, tuple[str, ...]] = {
    "pod": ("pytorch-cuda:2.8", "--pod", "--image", LOCATION, "--", "python", "-c", "import torch; print(torch.cuda.device_count())"),
    "job": TORCHRUN_JOB,
    "verify-job": ("pytorch-cuda:2.8", "--verify", "--nodes", "4", "--gpus", "8", "--runtime-class", "nvidia",
                   "--gpu-product", "NVIDIA-H100-80GB-HBM3", "--namespace", "gpu-checks"),
    "verify-job-1gpu": ("pytorch-cuda:2.8", "--verify", "--workload", "resnet50", "--steps", "20"),
}


@pytest.fixture
def manifests(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    _pushed(monkeypatch)
    found = {}
    for kind, args in CASES.items():
        code, out, err = _run(capsys, *args)
        assert code == 0, err
        found[kind] = yaml.safe_load(out)
    return found


# --- golden files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CASES))
def test_golden_manifest_is_unchanged(kind: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _pushed(monkeypatch)
    code, out, err = _run(capsys, *CASES[kind])
    assert code == 0, err
    path = GOLDEN / f"{kind}.yaml"
    if os.environ.get("ENVKIT_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert out == path.read_text(), f"{path.name} changed; ENVKIT_UPDATE_GOLDEN=1 rewrites it on purpose"


# --- the Kubernetes API's own schemas -------------------------------------------------------------


def test_validation_covers_several_recent_minor_versions() -> None:
    assert len(K8S_VERSIONS) >= 4
    assert {"1.29.0", "1.30.0", "1.31.0", "1.32.0"} <= set(K8S_VERSIONS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_openapi_schema(version: str,
                                                      manifests: dict[str, dict[str, Any]]) -> None:
    for kind, document in manifests.items():
        # strict: a field the API does not know is an error, not silently dropped by the server.
        validated = kubernetes_validate.validate(document, version, strict=True)
        assert validated == kv_utils.major_minor(version), kind


@pytest.mark.parametrize("version", [K8S_VERSIONS[0], K8S_VERSIONS[-1]])
def test_the_schema_check_rejects_what_a_cluster_would(version: str,
                                                      manifests: dict[str, dict[str, Any]]) -> None:
    """The validator is not vacuous: a misspelt field and a wrongly typed one both fail."""
    bad = json.loads(json.dumps(manifests["job"]))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1000
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
    bad = json.loads(json.dumps(manifests["verify-job"]))
    bad["spec"]["completions"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


# --- the official client's models -----------------------------------------------------------------


def _model(document: dict[str, Any], kind: str) -> Any:
    api = kubernetes.client.ApiClient()
    model = api._ApiClient__deserialize(document, kind)  # what the client does with a server's answer
    # Nothing was dropped or renamed on the way: the model serialises back to the same document.
    assert api.sanitize_for_serialization(model) == document
    return model


def _restricted(pod_spec: Any) -> Any:
    """The Pod Security Standard "restricted", field by field; returns the one container."""
    assert pod_spec.security_context.run_as_non_root is True
    assert pod_spec.security_context.run_as_user == 1000
    assert pod_spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod_spec.host_ipc is None and pod_spec.host_network is None and pod_spec.host_pid is None
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.restart_policy == "Never"
    [container] = pod_spec.containers
    context = container.security_context
    assert context.allow_privilege_escalation is False
    assert context.privileged is False
    assert context.capabilities.drop == ["ALL"] and context.capabilities.add is None
    assert context.run_as_non_root is True and context.run_as_user == 1000
    assert context.seccomp_profile.type == "RuntimeDefault"
    assert container.working_dir == "/workspace"
    # /dev/shm is memory-backed and bounded.
    [mount] = container.volume_mounts
    assert mount.mount_path == "/dev/shm"
    [volume] = [v for v in pod_spec.volumes if v.name == mount.name]
    assert volume.empty_dir.medium == "Memory"
    assert volume.empty_dir.size_limit
    return container


def test_pod_parses_as_v1_pod(manifests: dict[str, dict[str, Any]]) -> None:
    pod = _model(manifests["pod"], "V1Pod")
    assert pod.kind == "Pod" and pod.metadata.name == "pytorch-cuda-2-8"
    container = _restricted(pod.spec)
    assert container.image == LOCATION
    assert container.image_pull_policy == "IfNotPresent"
    assert container.command == ["python", "-c", "import torch; print(torch.cuda.device_count())"]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert pod.spec.volumes[0].empty_dir.size_limit == "8Gi"
    assert pod.metadata.annotations["envkit.io/image-pinned"] == "true"


def test_torchrun_job_parses_as_v1_job(manifests: dict[str, dict[str, Any]]) -> None:
    job = _model(manifests["job"], "V1Job")
    assert job.kind == "Job" and job.spec.backoff_limit == 0
    assert job.spec.completion_mode is None
    container = _restricted(job.spec.template.spec)
    assert container.image == LOCATION  # by digest: the location this host pushed the image to
    assert container.resources.limits == {"nvidia.com/gpu": "8"}
    assert container.command == ["torchrun", "--nproc-per-node", "8", "train.py"]
    env = {item.name: item.value for item in container.env}
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"
    assert env["OMP_NUM_THREADS"] == "1" and env["NCCL_DEBUG"] == "WARN"


def test_verify_job_parses_as_an_indexed_v1_job(manifests: dict[str, dict[str, Any]]) -> None:
    job = _model(manifests["verify-job"], "V1Job")
    assert job.metadata.name == "pytorch-cuda-2-8-verify"
    assert job.metadata.namespace == "gpu-checks"
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == 4 and job.spec.parallelism == 4
    # A failed index is not retried and does not stop the others; the Job then ends Failed.
    assert job.spec.backoff_limit_per_index == 0 and job.spec.backoff_limit is None
    spec = job.spec.template.spec
    container = _restricted(spec)
    # What envkit verify runs in its container, from the scripts the image carries, in order:
    # probe, benchmark, benchmark under DDP over the pod's 8 GPUs.
    [probe, bench] = spec.init_containers
    assert (probe.name, bench.name, container.name) == ("probe", "bench", "bench-ddp")
    assert probe.command == ["python", "/opt/envkit/probe/probe.py"]
    assert bench.command == ["python", "/opt/envkit/probe/bench.py", "--workload", "resnet50,yolo",
                             "--impl", "builtin"]
    assert container.command == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
        "/opt/envkit/probe/bench.py", "--workload", "resnet50,yolo", "--impl", "builtin",
        "--dist-timeout", "600",
    ]
    for stage in (probe, bench, container):
        assert stage.args is None
        assert stage.image == container.image and stage.working_dir == "/workspace"
        assert stage.resources.limits == {"nvidia.com/gpu": "8"}  # the same GPUs, stage after stage
        assert stage.security_context == container.security_context
        assert stage.volume_mounts == container.volume_mounts
        env = {item.name: item.value for item in stage.env}
        assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    ddp_env = {item.name: item.value for item in container.env}
    assert ddp_env["GLOO_SOCKET_IFNAME"] == "lo" and ddp_env["NCCL_SOCKET_IFNAME"] == "lo"
    assert spec.runtime_class_name == "nvidia"
    assert spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    # One pod per node.
    [term] = spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution
    assert term.topology_key == "kubernetes.io/hostname"
    assert term.label_selector.match_labels.items() <= job.spec.template.metadata.labels.items()
    assert spec.volumes[0].empty_dir.size_limit == "2Gi"


def test_a_one_gpu_verify_job_has_no_ddp_stage(manifests: dict[str, dict[str, Any]]) -> None:
    job = _model(manifests["verify-job-1gpu"], "V1Job")
    spec = job.spec.template.spec
    container = _restricted(spec)
    [probe] = spec.init_containers
    assert (probe.name, container.name) == ("probe", "bench")
    assert container.command == ["python", "/opt/envkit/probe/bench.py", "--workload", "resnet50",
                                 "--impl", "builtin", "--steps", "20"]
    assert container.resources.limits == probe.resources.limits == {"nvidia.com/gpu": "1"}
    assert job.spec.completions == 1


# --- what the verify Job runs ---------------------------------------------------------------------


def test_the_verify_scripts_are_where_the_dockerfile_puts_them() -> None:
    final_stage = (REPO / "templates" / "partials" / "final.j2").read_text()
    assert f"COPY probe/ {k8s.BAKED_PROBE_DIR}/\n" in final_stage
    assert k8s.PROBE_COMMAND == ("python", f"{k8s.BAKED_PROBE_DIR}/probe.py")
    assert k8s.BENCH_COMMAND == ("python", f"{k8s.BAKED_PROBE_DIR}/bench.py")
    for command in (k8s.PROBE_COMMAND, k8s.BENCH_COMMAND):
        script = command[1].removeprefix(f"{k8s.BAKED_PROBE_DIR}/")
        assert script in SCRIPT_FILES and (PROBE_DIR / script).is_file()
    for stage in k8s.verify_stages(8):
        scripts = [arg for arg in stage.command if arg.startswith("/")]
        assert scripts == [k8s.PROBE_COMMAND[1] if stage.name == "probe" else k8s.BENCH_COMMAND[1]]


class _Recorder(runner.ScriptExecutor):
    """Records what envkit verify launches, with the scripts where the image has them; every run
    prints nothing, so each stage ends there and the next call starts the next one."""

    def __init__(self) -> None:
        self.launched: list[list[str]] = []

    def script_path(self, script: str) -> str:
        return f"{k8s.BAKED_PROBE_DIR}/{script}"

    def launch(self, argv: list[str], *, timeout_s: float, distributed: bool, show: Any) -> runner.RunResult:
        self.launched.append(["python", *argv])
        return runner.RunResult(stdout="", stderr="", exit_code=1, timed_out=False)


def _verify_commands(options: runner.VerifyOptions, nproc: int) -> list[list[str]]:
    """The command lines envkit verify runs in its container for ``options``, stage by stage."""
    recorder = _Recorder()
    report = SimpleNamespace(verdict=None, log_tail=None, bench_partial=None, bench_ddp=None)
    stages = runner._Stages(report, options, recorder, None)  # type: ignore[arg-type]
    runner._run_probe(stages)
    runner._run_bench(stages)
    runner._run_ddp(stages, nproc)
    return recorder.launched


@pytest.mark.parametrize(
    ("gpus", "workload", "steps"),
    [(1, None, None), (2, None, None), (8, None, None), (8, "yolo", 50), (4, "resnet50,yolo", 1),
     (16, "yolo,resnet50", None)],
)
def test_the_stages_are_what_envkit_verify_runs(gpus: int, workload: str | None, steps: int | None) -> None:
    """The repeated constants and argument building match envkit verify's own, for a GPU run."""
    workloads = tuple(workload.split(",")) if workload else WORKLOADS
    options = runner.VerifyOptions(target="x", gpus=gpus, workloads=workloads, steps=steps)
    probe, bench, ddp = _verify_commands(options, gpus)
    stages = k8s.verify_stages(gpus, k8s.check_workloads(workload), steps)
    expected = [probe, bench] + ([ddp] if runner._ddp_processes(options, None) > 1 else [])  # type: ignore[arg-type]
    assert [list(stage.command) for stage in stages] == expected
    assert list(k8s.bench_args(workloads, steps)) == runner.bench_args(options)
    assert list(k8s.bench_args(workloads, steps, ddp=True)) == runner.bench_args(options, ddp=True)
    assert k8s.DDP_DIST_TIMEOUT == f"{runner.dist_timeout_s(runner.DEFAULT_TIMEOUT_S):g}"


def test_the_benchmark_accepts_the_jobs_arguments() -> None:
    pytest.importorskip("torch")
    sys.path.insert(0, str(PROBE_DIR))
    try:
        import bench  # type: ignore[import-not-found]  # as the image runs it: a plain script
    finally:
        sys.path.remove(str(PROBE_DIR))
    for stage in k8s.verify_stages(8, ("yolo",), 7):
        if stage.name == "probe":
            continue
        start = stage.command.index(k8s.BENCH_COMMAND[1]) + 1
        args = bench.parse_args(list(stage.command[start:]))
        assert args.workloads == ["yolo"] and args.steps == 7 and args.impl == "builtin"
        assert args.dist_timeout == (600.0 if stage.name == "bench-ddp" else bench.DEFAULT_DIST_TIMEOUT_S)


def test_user_values_never_reach_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Names, labels and classes go to metadata and selectors only: every command is the fixed
    one, with nothing but checked workload names and counts in it."""
    code, out, err = _run(capsys, "pytorch-cuda:2.8", "--verify", "--gpus", "4", "--nodes", "3",
                          "--name", "zq-name", "--namespace", "zq-ns", "--gpu-product", "ZQ-GPU",
                          "--runtime-class", "zq-class", "--shm-size", "3Gi", "--image", LOCATION)
    assert code == 0, err
    spec = yaml.safe_load(out)["spec"]["template"]["spec"]
    containers = spec["initContainers"] + spec["containers"]
    assert [c["command"] for c in containers] == [list(stage.command) for stage in k8s.verify_stages(4)]
    for container in containers:
        text = json.dumps([container["command"], container.get("env")])
        assert "zq" not in text.lower() and "3Gi" not in text and "$" not in text
        assert not container.get("args")
        assert container["command"][0] == "python"  # no shell anywhere
    for stage in k8s.verify_stages(16, WORKLOADS, 100_000):
        for arg in stage.command:
            assert re.fullmatch(r"[-A-Za-z0-9_./=,]+", arg), arg


def test_the_probe_run_as_the_job_runs_it_prints_one_json_report(tmp_path: Path) -> None:
    """The probe stage's command, with the probe at its place in this checkout: a plain script, no
    envkit; a report that is not ok exits 1, which fails the init container and so the pod."""
    argv = [sys.executable if arg == "python" else arg for arg in k8s.PROBE_COMMAND]
    argv[1] = str(PROBE_DIR / "probe.py")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(argv + ["--size", "64"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    assert report["schema"] == "envkit.probe/1"
    assert result.returncode == (0 if report["ok"] else 1)


# --- the image ------------------------------------------------------------------------------------


def test_an_image_never_pushed_is_named_by_its_local_tag_with_pull_policy_never(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _run(capsys, "pytorch-cuda:2.8", "--", "python", "train.py")
    assert code == 0
    container = yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "envkit/pytorch-cuda:2.8"
    assert container["imagePullPolicy"] == "Never"
    assert "warning:" in err and "no Docker engine answers" in err and "envkit push" in err


def test_a_pushed_image_is_named_by_digest(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _pushed(monkeypatch)
    remember_location(IMAGE_ID, f"a.example.org/x/y@{DIGEST}")
    code, out, err = _run(capsys, "pytorch-cuda:2.8", "--pod", "--", "python", "train.py")
    assert code == 0
    assert yaml.safe_load(out)["spec"]["containers"][0]["image"] == f"a.example.org/x/y@{DIGEST}"
    assert "warning" not in err and f"also at {LOCATION}" in err


def test_the_image_id_comes_from_the_engine(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import envkit.engine.client as engine_client

    engine = FakeClient({"envkit/pytorch-cuda:2.8": FakeImage(IMAGE_ID)})
    monkeypatch.setattr(engine_client, "get_client", lambda **_: engine)
    code, out, err = _run(capsys, "pytorch-cuda:2.8", "--", "python", "t.py")
    assert code == 0 and "was never pushed from this host" in err
    remember_location(IMAGE_ID, LOCATION)
    code, out, err = _run(capsys, "pytorch-cuda:2.8", "--", "python", "t.py")
    assert code == 0 and "warning" not in err
    assert yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]["image"] == LOCATION
    code, out, err = _run(capsys, "pytorch-cuda:2.7", "--", "python", "t.py")
    assert code == 0 and "envkit/pytorch-cuda:2.7 is not on this engine" in err


def test_choose_image_says_why_it_falls_back() -> None:
    built = k8s.choose_image("envkit/x:1", explicit=None, image_id=IMAGE_ID, why_unknown=None)
    assert (built.reference, built.pinned, built.pull_policy) == ("envkit/x:1", False, "Never")
    assert "never pushed" in built.note
    tagged = k8s.choose_image("envkit/x:1", explicit="registry.example.org/x:1", image_id=None, why_unknown=None)
    assert (tagged.pinned, tagged.pull_policy) == (False, "IfNotPresent")
    assert "not a digest" in tagged.note


# --- torchrun -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("torchrun", "train.py"), ("torchrun", "--nproc-per-node=4", "train.py")),
        (("/opt/venv/bin/torchrun", "--standalone", "train.py", "--nproc-per-node", "2"),
         ("/opt/venv/bin/torchrun", "--nproc-per-node=4", "--standalone", "train.py", "--nproc-per-node", "2")),
        (("python", "-m", "torch.distributed.run", "--nproc_per_node=4", "t.py"),
         ("python", "-m", "torch.distributed.run", "--nproc_per_node=4", "t.py")),
        (("torchrun", "--nnodes", "1", "--nproc-per-node", "gpu", "-m", "pkg.train"),
         ("torchrun", "--nnodes", "1", "--nproc-per-node", "gpu", "-m", "pkg.train")),
    ],
)
def test_torchrun_gets_one_process_per_gpu(command: tuple[str, ...], expected: tuple[str, ...]) -> None:
    planned, env = k8s.plan_torchrun(command, 4)
    assert planned == expected
    assert dict(env)["MASTER_PORT"] == "29500"


def test_other_commands_are_left_alone() -> None:
    assert k8s.plan_torchrun(("python", "train.py", "--nproc-per-node", "3"), 4) == (
        ("python", "train.py", "--nproc-per-node", "3"), ())


def test_dollar_signs_reach_the_program_literally(capsys: pytest.CaptureFixture[str]) -> None:
    """The kubelet expands $(VAR) in command and args and reads $$ as $: every $ is doubled."""
    code, out, _ = _run(capsys, "pytorch-cuda:2.8", "--", "echo", "$(HOME)", "a$$b", "; rm -rf /")
    assert code == 0
    command = yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["echo", "$$(HOME)", "a$$$$b", "; rm -rf /"]


# --- output ---------------------------------------------------------------------------------------


def test_json_and_output_file_hold_the_same_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, as_yaml, _ = _run(capsys, *CASES["verify-job"])
    assert code == 0
    code, as_json, _ = _run(capsys, *CASES["verify-job"], "--json")
    assert code == 0 and json.loads(as_json) == yaml.safe_load(as_yaml)
    target = tmp_path / "verify.yaml"
    code, out, err = _run(capsys, *CASES["verify-job"], "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == as_yaml
    assert ("kubectl -n gpu-checks logs -l job-name=pytorch-cuda-2-8-verify --all-containers --prefix "
            "--tail=-1 | grep -F '] {'") in err
    assert "(probe, bench, bench-ddp)" in err


def test_the_gathering_command_keeps_exactly_the_report_lines() -> None:
    """What `kubectl logs --all-containers --prefix` prints for a pod (stdout and stderr of every
    container), and what the grep in the hint keeps: one report per stage, tagged by its container."""
    workload = k8s.plan(kind="verify", source="pytorch-cuda:2.8", uid=1000, gpus=2,
                        image=k8s.choose_image("envkit/x:1", explicit=LOCATION, image_id=None, why_unknown=None))
    pattern = k8s.gather_hint(workload).rsplit("grep -F ", 1)[1].strip("'")
    log = [
        '[pod/v-0-abcde/probe] /venv/lib/torch/cuda/__init__.py:1: UserWarning: {"not": "a report"}',
        '[pod/v-0-abcde/probe] {"ok": true, "schema": "envkit.probe/1"}',
        "[pod/v-0-abcde/bench] [bench] resnet50: fp32 batch 256",
        '[pod/v-0-abcde/bench] ENVKIT_EVENT {"event": "rung", "status": "ok"}',
        '[pod/v-0-abcde/bench] {"ok": true, "schema": "envkit.bench/1"}',
        "[pod/v-0-abcde/bench-ddp] W0101 torch/distributed/run.py: Setting OMP_NUM_THREADS",
        '[pod/v-0-abcde/bench-ddp] {"ok": true, "schema": "envkit.bench/1"}',
    ]
    kept = [line for line in log if pattern in line]
    assert [line.split("/")[2].split("]")[0] for line in kept] == [s.name for s in workload.stages]
    for line in kept:
        json.loads(line.split("] ", 1)[1])


def test_default_names_fit_every_index() -> None:
    assert k8s.default_name("pytorch-cuda:2.8", "job") == "pytorch-cuda-2-8"
    assert k8s.default_name("./my.spec.yaml", "verify") == "my-spec-verify"
    long = "x" * 80 + ":1"
    assert len(k8s.default_name(long, "verify")) <= 63 - 1 - 3
    image = k8s.choose_image("envkit/x:1", explicit=LOCATION, image_id=None, why_unknown=None)
    k8s.plan(kind="verify", source=long, uid=1000, image=image, nodes=1000)


# --- bad input: exit 2, with a message that names the problem -------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpus", "0", "--", "x"), "--gpus 0"),
        (("--gpus", "17", "--", "x"), "from 1 to 16"),
        (("--gpus", "-1", "--", "x"), "--gpus -1"),
        (("--gpus", "eight", "--", "x"), "eight"),
        (("--name", "Bad_Name", "--", "x"), "not a Kubernetes name"),
        (("--name", "a" * 64, "--", "x"), "not a Kubernetes name"),
        (("--namespace", "-ns", "--", "x"), "not a Kubernetes name"),
        (("--runtime-class", "NVIDIA", "--", "x"), "--runtime-class"),
        (("--gpu-product", "H100 80GB", "--", "x"), "not a Kubernetes label value"),
        (("--gpu-product", "x" * 64, "--", "x"), "not a Kubernetes label value"),
        (("--shm-size", "8g", "--", "x"), "like 8Gi"),
        (("--shm-size", "2Ti", "--", "x"), "at most 1Ti"),
        (("--image", "Not A Ref", "--", "x"), "not a registry reference"),
        ((), "nothing to run"),
        (("--nodes", "2", "--", "x"), "--nodes is for --verify"),
        (("--verify", "--", "x"), "takes no command"),
        (("--verify", "--workload", "vit"), "unknown workload vit"),
        (("--verify", "--workload", ","), "(none given)"),
        (("--verify", "--steps", "0"), "--steps 0"),
        (("--workload", "yolo", "--", "x"), "are for --verify"),
        (("--steps", "5", "--", "x"), "are for --verify"),
        (("--verify", "--nodes", "0"), "--nodes 0"),
        (("--verify", "--nodes", "1001"), "from 1 to 1000"),
        (("--verify", "--nodes", "100", "--name", "n" * 61), "not a Kubernetes name"),
        (("--pod", "--verify"), "give one"),
        (("--", "echo", "a\x1b[2Jb"), "control character"),
        (("--", "echo", "a\x00b"), "control character"),
        (("--gpus", "8", "--", "torchrun", "--nproc-per-node", "4", "t.py"), "does not match --gpus 8"),
        (("--", "torchrun", "--nnodes", "2", "t.py"), "single-node"),
    ],
)
def test_bad_input_is_exit_2(args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "pytorch-cuda:2.8", *args)
    assert code == 2, err
    assert out == ""
    assert message in err


def test_unknown_image_is_exit_2_with_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "pytorch-cuda:9.9", "--", "x")
    assert code == 2 and out == ""
    assert "no catalog image pytorch-cuda:9.9" in err and "pytorch-cuda:2.8" in err


def test_an_output_that_is_a_directory_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "pytorch-cuda:2.8", "-o", str(tmp_path), "--", "x")
    assert code == 2 and "directory" in err

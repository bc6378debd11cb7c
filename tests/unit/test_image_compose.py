"""The remembered system part: its recipe, the memo's file, and labels set the same on both paths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from envkit.image.build import plan_build
from envkit.image.compose import Part, SystemMemo, SystemPart, relabel
from envkit.image.render import labels_for, system_recipe

NO_CA: dict[str, str] = {}
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def _input(**changes):  # type: ignore[no-untyped-def]
    data = plan_build("pytorch-cuda:2.8", with_requirements=False, environ=NO_CA).render_input
    spec_changes = changes.pop("spec", {})
    spec = data.spec.model_copy(update=spec_changes) if spec_changes else data.spec
    return replace(data, spec=spec, **changes)


def test_the_recipe_leaves_out_the_labels_and_comments_but_not_what_makes_layers() -> None:
    plain = _input()
    recipe = system_recipe(plain)
    assert "LABEL" not in recipe and not any(line.startswith("#") for line in recipe.splitlines())
    assert "apt-get install" in recipe and 'CMD ["python"]' in recipe
    # Another name, another tag or another Python lock: the same system part.
    renamed = _input(spec={"name": "my-torch", "tag": "2.8-bump"}, lock_digest="sha256:" + "9" * 64)
    assert labels_for(renamed) != labels_for(plain)
    assert system_recipe(renamed) == recipe
    # A lock that pins pip changes what the venv keeps; more apt packages change the layers.
    assert system_recipe(_input(python_names=("pip",))) != recipe
    assert system_recipe(_input(system_pins={"zstd": "1.5.4+dfsg2-5"})) != recipe


def _part() -> SystemPart:
    config = {"config": {"Labels": {"old": "1"}}, "rootfs": {"type": "layers", "diff_ids": [D1, D2, D3]},
              "history": [{"created_by": "base"}, {"created_by": "RUN x"},
                          {"created_by": "/bin/bash -o pipefail -c #(nop)  LABEL old=1", "empty_layer": True}]}
    return SystemPart(config=config, base=[Part("base-1", diff_id=D1)],
                      layers=[Part("system-2", diff_id=D2), Part("system-3", diff_id=D3)])


def test_the_memo_gives_back_what_it_was_given_and_ignores_a_file_it_did_not_write(tmp_path: Path) -> None:
    memo = SystemMemo(tmp_path)
    assert memo.get("k") is None
    memo.put("k", _part())
    back = memo.get("k")
    assert back is not None
    assert [p.diff_id for p in back.base] == [D1] and [p.name for p in back.base] == ["base-1"]
    assert [(p.name, p.diff_id, p.path) for p in back.layers] == [("system-2", D2, ""), ("system-3", D3, "")]
    assert back.config == _part().config
    path = tmp_path / "k.json"
    data = json.loads(path.read_text())
    for broken in ({**data, "layers": [D2, "sha256:nothex"]}, {**data, "layers": [D3, D2]},
                   {**data, "version": 99}, {**data, "config": "x"}):
        path.write_text(json.dumps(broken))
        assert memo.get("k") is None, broken
    path.write_text("not json")
    assert memo.get("k") is None


def test_relabel_sets_the_labels_and_their_history_entry_whatever_the_config_had() -> None:
    base = {"io.envkit.base.suite": "bookworm", "io.envkit.source-date-epoch": "0"}
    labels = {"io.envkit.name": "pytorch-cuda:2.8", "io.envkit.source-date-epoch": "1761955200"}
    one = relabel(_part().config, base, labels)
    assert one["config"]["Labels"] == {"io.envkit.base.suite": "bookworm", "io.envkit.name": "pytorch-cuda:2.8",
                                       "io.envkit.source-date-epoch": "1761955200"}
    assert one["history"][2]["created_by"] == (
        "/bin/bash -o pipefail -c #(nop)  LABEL io.envkit.name=pytorch-cuda:2.8 io.envkit.source-date-epoch=1761955200")
    # From a config that carried other labels (an earlier build's), the same result.
    other = relabel(relabel(_part().config, base, {"x": "y"}), base, labels)
    assert other == one
    assert _part().config["config"]["Labels"] == {"old": "1"}  # the input is not changed

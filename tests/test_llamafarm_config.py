"""llamafarm.yaml merging: farmhand's role entries are brought up to date, everything of the
user's stays, and runtime.default_model is farmhand's only while it holds what farmhand wrote."""

from __future__ import annotations

import pytest

from supervisor import llamafarm, projectfs

DESIRED = {"version": "v1", "name": "p", "namespace": "default",
           "runtime": {"default_model": "default", "models": [
               {"name": "default", "provider": "openai", "model": "gemma3-270m", "default": True},
               {"name": "fast", "provider": "openai", "model": "gemma3-270m", "default": False}]}}
USER_MODEL = {"name": "cloud", "provider": "openai", "model": "gpt-4o", "api_key": "${env:OPENAI_API_KEY}"}


def doc(default_model=None, models=(USER_MODEL,)):
    runtime = {"models": [dict(m) for m in models]}
    if default_model is not None:
        runtime["default_model"] = default_model
    return {"version": "v1", "name": "p", "namespace": "default", "prompts": [{"name": "x", "messages": []}],
            "runtime": runtime}


@pytest.mark.parametrize("current, written, managed, want_default", [
    (None, None, set(), "default"),  # nothing set: farmhand's default
    ("cloud", None, set(), "cloud"),  # the user's own model, set by the user: kept
    ("fast", "default", {"default", "fast"}, "fast"),  # the user pointed it at a farmhand entry: kept
    ("default", "default", {"default", "fast"}, "default"),  # farmhand's own value: farmhand's
    ("gone", None, set(), "default"),  # names nothing that exists: replaced
])
def test_default_model_ownership(current, written, managed, want_default):
    existing = doc(current)
    if managed:
        existing["runtime"]["models"] += [dict(m) for m in DESIRED["runtime"]["models"]]
    out = llamafarm.merged(existing, DESIRED, managed, written)
    assert out["runtime"]["default_model"] == want_default
    flags = {m["name"]: m.get("default") for m in out["runtime"]["models"]}
    assert flags == {"cloud": None, "default": want_default == "default", "fast": want_default == "fast"}
    assert out["prompts"] == existing["prompts"]
    assert out["runtime"]["models"][0] == USER_MODEL


def test_entries_farmhand_no_longer_manages_are_removed_and_the_users_stay():
    existing = doc("default", models=(USER_MODEL, {"name": "old-role", "provider": "openai", "model": "m"},
                                      {"name": "default", "provider": "openai", "model": "m"}))
    out = llamafarm.merged(existing, DESIRED, {"old-role", "default"}, "default")
    assert [m["name"] for m in out["runtime"]["models"]] == ["cloud", "default", "fast"]


def test_backups_are_bounded(tmp_path):
    path = tmp_path / "llamafarm.yaml"
    path.write_text("version: v1\nname: p\nnamespace: default\nruntime: {models: []}\n")
    text = llamafarm.render(DESIRED["runtime"]["models"], "default", "p", tmp_path)
    managed: set[str] = set()
    for i in range(projectfs.BACKUPS_KEPT + 3):
        path.write_text(path.read_text() + f"# edit {i}\n")
        llamafarm.write_merged(path, text, managed, "default")
        managed = {"default", "fast"}
    backups = projectfs.backups(path)
    assert len(backups) == projectfs.BACKUPS_KEPT
    assert f"# edit {projectfs.BACKUPS_KEPT + 2}" in backups[-1].read_text()

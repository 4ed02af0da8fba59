"""llamafarm.yaml as LlamaFarm 0.0.34's server reads it (issue 18): what farmhand writes for every
shipped profile and every example validates against that release's schema
(supervisor/schemas/llamafarm.schema.yaml, vendored), breaks none of the rules the server applies
silently, and bounds every request; the rules themselves are pinned case by case."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from planning import GIB, amd, build, host, nvidia, oracle

from supervisor import llamafarm, profiles

PROFILES = sorted(p["name"] for p in profiles.load_profiles(profiles.PROFILES_DIR))
EXAMPLES = sorted((REPO / "profiles" / "examples").glob("*.yaml"))
BIG_HOST = host(128, gpus=[nvidia("RTX 4090", 24)])
HOST_FOR = {  # a host each profile is for (any other gets BIG_HOST)
    "amd-rocm": host(64, gpus=[amd("Radeon RX 7900 XTX", 24, "gfx1100")]),
    "apple": host(64, system="Darwin", arch="arm64", gpus=[{"vendor": "apple", "name": "Apple M2 Max",
                                                           "vram_bytes": 48 * GIB, "unified_memory": True}]),
}


def _rendered(plan, tmp_path) -> dict:
    return yaml.safe_load(llamafarm.render(plan.entries, plan.selection.default_role, plan.profile["name"], tmp_path))


def _check(doc: dict, where: str, plan) -> None:
    llamafarm.validate(doc, where)
    # Prompt sets are the user's section: the plan names each one their file lacks (plan.warnings).
    found = [p for p in llamafarm.problems(doc) if "prompt set" not in p]
    assert found == [], f"{where}: {found}"
    for entry in doc["runtime"]["models"]:
        for name in entry.get("prompts") or []:
            assert any(f"prompt set {name!r}" in w for w in plan.warnings), f"{where}: {name} not warned"
    for entry in doc["runtime"]["models"]:
        cap = (entry.get("model_api_parameters") or {}).get("max_tokens")
        assert isinstance(cap, int) and cap > 0, f"{where}: role {entry['name']} has no max_tokens"
        if entry["provider"] == "openai" and entry.get("base_url"):
            assert entry["base_url"].rstrip("/").endswith("/v1"), f"{where}: {entry['base_url']}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_writes_what_llamafarm_0034_reads(profile, tmp_path):
    facts = HOST_FOR.get(profile, BIG_HOST)
    plan = build(tmp_path, facts, profile=profile, oracle_=oracle(facts=facts, problems={}))
    _check(_rendered(plan, tmp_path), f"profile {profile}", plan)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_writes_what_llamafarm_0034_reads(example, tmp_path):
    plan = build(tmp_path, BIG_HOST, overrides=yaml.safe_load(example.read_text()))
    _check(_rendered(plan, tmp_path), example.name, plan)


def test_a_role_keeps_its_own_max_tokens_and_the_others_get_one_sized_to_their_context(tmp_path):
    example = yaml.safe_load((REPO / "profiles/examples/two-llama-servers-and-cloud.yaml").read_text())
    plan = build(tmp_path, host(32), overrides=example)
    caps = {e["name"]: e["model_api_parameters"]["max_tokens"] for e in plan.entries}
    assert caps == {"default": 2048, "fast": 256, "cloud": 4096}, caps  # fast and cloud set theirs
    argv = {r.name: list(r.argv) for r in plan.renderer.render().runtimes}
    assert argv["llama-server"][argv["llama-server"].index("--n-predict") + 1] == "2048"
    assert argv["llama-server-fast"][argv["llama-server-fast"].index("--n-predict") + 1] == "256"


RULES = {
    "a name used twice": ({"runtime": {"models": [{"name": "a", "provider": "openai", "model": "m"},
                                                  {"name": "a", "provider": "openai", "model": "n"}]}},
                          "the name 'a' is used 2 times"),
    "a default that names no model": ({"runtime": {"default_model": "b", "models": [
        {"name": "a", "provider": "openai", "model": "m"}]}}, "runtime.default_model 'b' names no model"),
    "an undefined prompt set": ({"runtime": {"models": [{"name": "a", "provider": "openai", "model": "m",
                                                         "prompts": ["nope"]}]}}, "prompt set 'nope' is not defined"),
    "an OpenAI base_url without /v1": ({"runtime": {"models": [{"name": "a", "provider": "openai", "model": "m",
                                                                "base_url": "http://127.0.0.1:11550"}]}},
                                       "must end in /v1 for provider openai"),
    "an Ollama base_url with a path": ({"runtime": {"models": [{"name": "a", "provider": "ollama", "model": "m",
                                                                "base_url": "http://127.0.0.1:11434/v1"}]}},
                                       "must be the server's root"),
    "Lemonade without /api/v1": ({"runtime": {"models": [{"name": "a", "provider": "lemonade", "model": "m",
                                                          "base_url": "http://127.0.0.1:8020/v1"}]}},
                                 "must end in /api/v1"),
}


@pytest.mark.parametrize("case", RULES)
def test_what_llamafarm_accepts_silently_is_named(case):
    doc, says = RULES[case]
    found = llamafarm.problems(doc)
    assert len(found) == 1 and says in found[0], f"{case}: {found}"


def test_a_conforming_document_has_no_problem():
    doc = {"prompts": [{"name": "p", "messages": []}], "runtime": {"default_model": "a", "models": [
        {"name": "a", "provider": "openai", "model": "m", "base_url": "https://api.openai.com/v1", "prompts": ["p"]},
        {"name": "b", "provider": "ollama", "model": "m", "base_url": "http://127.0.0.1:11434"},
        {"name": "c", "provider": "lemonade", "model": "m", "base_url": "http://127.0.0.1:8020/api/v1"}]}}
    assert llamafarm.problems(doc) == []

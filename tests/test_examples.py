"""Every example in profiles/examples/ (one per pattern of LlamaFarm's multi-model guide) plans
on the hosts it is meant for, online and air-gapped, and renders to a llamafarm.yaml that
LlamaFarm's schema accepts. No services are needed."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from planning import build, host, nvidia, offline, oracle

from supervisor import llamafarm

EXAMPLES = sorted((REPO / "profiles" / "examples").glob("*.yaml"))
HOSTS = {"cpu 32 GB": host(32), "rtx 4090": host(64, gpus=[nvidia("RTX 4090", 24)])}
# What each example's roles are, and which role is the default.
ROLES = {
    "fallback-chain": (["primary", "fallback", "emergency"], "primary"),
    "local-cloud-hybrid": (["local", "cloud"], "local"),
    "mcp-tools": (["assistant", "data-analyst", "power-user"], "assistant"),
    "speed-tiers": (["instant", "medium", "powerful"], "medium"),
    "task-specific": (["general", "coder", "writer", "analyst"], "general"),
    "two-llama-servers-and-cloud": (["default", "fast", "cloud"], "default"),
}


def test_every_example_is_listed():
    assert sorted(p.stem for p in EXAMPLES) == sorted(ROLES)


@pytest.mark.parametrize("host_name", HOSTS)
@pytest.mark.parametrize("network", ["online", "offline"])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_and_renders_a_valid_llamafarm_yaml(example, network, host_name, tmp_path):
    overrides = yaml.safe_load(example.read_text())
    plan = build(tmp_path, HOSTS[host_name], overrides=overrides,
                 oracle_=oracle(available=offline) if network == "offline" else None)
    roles, default = ROLES[example.stem]
    assert [b.role for b in plan.selection.roles] == roles and plan.selection.default_role == default
    assert not plan.selection.dropped
    doc = yaml.safe_load(llamafarm.render(plan.entries, default, plan.profile["name"], tmp_path))
    llamafarm.validate(doc, example.name)
    assert doc["runtime"]["default_model"] == default
    assert [m["name"] for m in doc["runtime"]["models"]] == roles
    assert [m["name"] for m in doc["runtime"]["models"] if m["default"]] == [default]
    for entry in doc["runtime"]["models"]:
        key = entry.get("api_key")
        assert key is None or (key.startswith("${env:") and key.endswith("}")), entry
    if network == "offline":  # every local role ends on the embedded model
        for b in plan.selection.roles:
            assert b.remote is not None or b.model == "gemma3-270m", b


def test_speed_tiers_online_get_their_own_models_and_processes(tmp_path):
    overrides = yaml.safe_load((REPO / "profiles/examples/speed-tiers.yaml").read_text())
    plan = build(tmp_path, HOSTS["cpu 32 GB"], overrides=overrides)
    got = {b.role: (b.runtime, b.model or b.remote.name) for b in plan.selection.roles}
    assert got == {"instant": ("llama-server-instant", "qwen2.5-0.5b-instruct"),
                   "medium": ("llama-server", "llama-3.2-3b-instruct"),
                   "powerful": ("llama-server-powerful", "qwen2.5-7b-instruct-gguf")}
    # three llama-servers and the gateway in front of them, each on its own port
    assert len({rt.port for rt in plan.selection.runtimes.values()}) == 4 and plan.selection.gateway == "gateway"


def test_references_to_prompts_and_mcp_servers_are_checked_against_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    overrides = yaml.safe_load((REPO / "profiles/examples/mcp-tools.yaml").read_text())
    project = tmp_path / "project"
    project.mkdir()
    plan = build(tmp_path, HOSTS["cpu 32 GB"], overrides=overrides)
    path = project / "llamafarm.yaml"
    # Through the gateway: the unset key leaves the cloud model out of it, and llamafarm.yaml has
    # no ${env:VAR} for LlamaFarm 0.0.34 to send literally.
    assert plan.warnings == [
        "role power-user: remote openai is left out of the gateway: OPENAI_API_KEY is not set (set it and apply "
        "again)",
        f"role assistant: MCP server 'filesystem' is not defined in {path} (add it under mcp.servers:)",
        f"role data-analyst: MCP server 'database' is not defined in {path} (add it under mcp.servers:)",
        f"role power-user: MCP server 'filesystem' is not defined in {path} (add it under mcp.servers:)",
        f"role power-user: MCP server 'database' is not defined in {path} (add it under mcp.servers:)"]
    # Without it (the example with `gateway: null`), each problem is named for LlamaFarm directly.
    direct = build(tmp_path / "direct", HOSTS["cpu 32 GB"], overrides=overrides | {
        "deployment": overrides["deployment"] | {"gateway": None}})
    direct_path = tmp_path / "direct" / "project" / "llamafarm.yaml"
    assert direct.warnings == [
        "role power-user: OPENAI_API_KEY is not set; LlamaFarm cannot call gpt-4o-mini at "
        "https://api.openai.com/v1 until it is",
        f"role assistant: MCP server 'filesystem' is not defined in {direct_path} (add it under mcp.servers:)",
        f"role data-analyst: MCP server 'database' is not defined in {direct_path} (add it under mcp.servers:)",
        f"role power-user: MCP server 'filesystem' is not defined in {direct_path} (add it under mcp.servers:)",
        f"role power-user: MCP server 'database' is not defined in {direct_path} (add it under mcp.servers:)",
        "role power-user: LlamaFarm 0.0.34 sends api_key ${env:OPENAI_API_KEY} literally (it does not resolve "
        "${env:...}), so gpt-4o-mini will not authenticate; put a gateway that holds $OPENAI_API_KEY in front of "
        "it (its base_url in this role), or use a LlamaFarm release that resolves the reference"]
    monkeypatch.setenv("OPENAI_API_KEY", "set-for-this-test")
    path.write_text("version: v1\nname: p\nnamespace: n\nruntime: {}\nmcp:\n  servers:\n"
                    "    - {name: filesystem, transport: stdio, command: npx}\n"
                    "    - {name: database, transport: http, base_url: 'http://127.0.0.1:8080/mcp'}\n")
    plan = build(tmp_path, HOSTS["cpu 32 GB"], overrides=overrides)
    assert not [w for w in plan.warnings if "MCP server" in w]

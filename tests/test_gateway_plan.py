"""What a plan with `deployment.gateway: litellm` produces, pinned: each role's route (its chosen
candidate, then the later ones served here, then what `fallbacks` adds), LiteLLM's config (keys
only as os.environ/VAR), the gateway's argv and env (keys only as ${env:VAR}), llamafarm.yaml
pointing every role at the gateway with no key; and bad gateway input as one line, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml
from checks import one_line_error
from planning import build, host, oracle

from supervisor.errors import BadInput

HYBRID = {
    "deployment": {
        "gateway": "litellm",
        "runtimes": {"fast": {"backend": "llama-server", "variant": "cpu"}},
        "roles": {
            "default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server"}, {"remote": "gpt"}]},
            "fast": {"use": [{"model": "gemma3-270m", "runtime": "fast", "ctx_size": 1024}]},
            "cloud": {"use": [{"remote": "gpt"}]}},
        "remote": {"gpt": {"provider": "openai", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"},
                   "mine": {"provider": "ollama", "model": "llama3", "base_url": "http://10.0.0.5:11434"}}},
}


def gateway_plan(tmp_path, overrides=HYBRID, keys=("OPENAI_API_KEY",)):
    facts = host()
    o = oracle(facts=facts)
    o.is_set = lambda var: var in keys
    return build(tmp_path, facts, oracle_=o, profile="cpu-small", overrides=overrides)


def with_gateway(**changes) -> dict:
    doc = json.loads(json.dumps(HYBRID))
    doc["deployment"]["gateway"] = {"backend": "litellm", **changes}
    return doc


def test_each_role_routes_through_its_chain(tmp_path):
    p = gateway_plan(tmp_path, with_gateway(fallbacks={"fast": ["default", "mine"]}))
    sel = p.selection
    ports = {name: rt.port for name, rt in sel.runtimes.items()}
    assert sel.gateway == "gateway" and set(ports) == {"llama-server", "fast", "gateway"}
    assert len(set(ports.values())) == 3
    routes = {r.name: [(u.label, u.model, u.api_base, u.api_key_env) for u in r.upstreams] for r in sel.routes}
    local = ("gemma3-270m on llama-server", "gemma3-270m", f"http://127.0.0.1:{ports['llama-server']}/v1", None)
    fast = ("gemma3-270m on fast", "gemma3-270m", f"http://127.0.0.1:{ports['fast']}/v1", None)
    gpt = ("remote gpt", "gpt-4o-mini", "https://api.openai.com/v1", "OPENAI_API_KEY")
    mine = ("remote mine", "llama3", "http://10.0.0.5:11434/v1", None)  # ollama's OpenAI API is under /v1
    assert routes == {"default": [local, gpt], "fast": [fast, local, gpt, mine], "cloud": [gpt]}
    caps = {r.name: r.max_tokens for r in sel.routes}
    assert caps == {"default": 2048, "fast": 256, "cloud": 1024}  # a quarter of each context; a remote's 1024


def test_llamafarm_yaml_points_every_role_at_the_gateway_and_holds_no_key(tmp_path):
    p = gateway_plan(tmp_path)
    gw = p.selection.runtimes["gateway"]
    assert [(e["name"], e["provider"], e["model"], e["base_url"], "api_key" in e) for e in p.entries] == [
        ("default", "openai", "default", gw.url, False), ("fast", "openai", "fast", gw.url, False),
        ("cloud", "openai", "cloud", gw.url, False)]
    assert gw.url == f"http://127.0.0.1:{gw.port}/v1"
    assert not [w for w in p.warnings if "literally" in w], p.warnings  # no ${env:VAR} left for LlamaFarm
    assert p.entries[0]["description"].startswith("gemma3-270m on llama-server -> remote gpt, through the gateway")


def test_the_gateway_config_and_spec_hold_no_secret_value(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-to-be-written")
    p = gateway_plan(tmp_path)
    (spec,) = [r for r in p.renderer.render().runtimes if r.name == "gateway"]
    env = dict(spec.env)
    assert env["OPENAI_API_KEY"] == "${env:OPENAI_API_KEY}"  # resolved by the supervisor at spawn
    assert env["LITELLM_TELEMETRY_DISABLED"] == "true" and env["DISABLE_ADMIN_UI"] == "True"
    assert env["LITELLM_CORS_ORIGINS"] == "http://127.0.0.1:8000" and env["LITELLM_CORS_ALLOW_CREDENTIALS"] == "false"
    assert spec.argv[1:3] == ("--config", str(tmp_path / "home/state/runtime-files/gateway/litellm.yaml"))
    assert spec.argv[3:7] == ("--host", "127.0.0.1", "--port", str(spec.port))
    assert spec.readiness_url == f"http://127.0.0.1:{spec.port}/health/readiness"
    (text,) = p.renderer.files(p.selection.runtimes["gateway"]).values()
    config = yaml.safe_load(text)
    groups = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert groups["default"]["model"] == "openai/gemma3-270m" and groups["default"]["api_key"] == "none"
    assert groups["default.fallback.1"] == {"model": "openai/gpt-4o-mini", "api_base": "https://api.openai.com/v1",
                                            "api_key": "os.environ/OPENAI_API_KEY", "max_tokens": 2048}
    assert config["router_settings"]["fallbacks"] == [{"default": ["default.fallback.1"]}]
    assert config["router_settings"]["num_retries"] == 0
    assert config["general_settings"]["dangerously_permit_weak_or_unset_master_key"] is True  # loopback only
    for artefact in (text, p.renderer.text(), json.dumps(p.entries)):
        assert "sk-not-to-be-written" not in artefact
    steps = [s.id for s in p.steps]
    assert steps.index("runtime-file:gateway/litellm.yaml") < steps.index("spec:runtimes.json")


def test_a_config_change_restarts_the_gateway(tmp_path):
    before = {r.name: r.identity for r in gateway_plan(tmp_path / "a").renderer.render().runtimes}
    after = {r.name: r.identity for r in gateway_plan(tmp_path / "a", with_gateway(fallbacks={"fast": ["cloud"]}))
             .renderer.render().runtimes}
    assert before["gateway"] != after["gateway"] and before["llama-server"] == after["llama-server"]


def test_an_unset_key_leaves_its_upstream_out_with_a_warning(tmp_path):
    p = gateway_plan(tmp_path, keys=())
    routes = {r.name: [u.label for u in r.upstreams] for r in p.selection.routes}
    assert routes == {"default": ["gemma3-270m on llama-server"], "fast": ["gemma3-270m on fast"], "cloud": []}
    assert "role default: remote gpt is left out of the gateway: OPENAI_API_KEY is not set (set it and apply again)" \
        in p.warnings


def test_beyond_loopback_the_gateway_needs_its_master_key(tmp_path):
    with pytest.raises(BadInput, match=r"deployment.gateway.host: listening on 0.0.0.0 .* needs master_key_env"):
        gateway_plan(tmp_path, with_gateway(host="0.0.0.0"))
    p = gateway_plan(tmp_path, with_gateway(host="0.0.0.0", master_key_env="GATEWAY_KEY"))
    (spec,) = [r for r in p.renderer.render().runtimes if r.name == "gateway"]
    assert dict(spec.env)["LITELLM_MASTER_KEY"] == "${env:GATEWAY_KEY}"
    (text,) = p.renderer.files(p.selection.runtimes["gateway"]).values()
    assert yaml.safe_load(text)["general_settings"] == {"disable_spend_logs": True,
                                                        "master_key": "os.environ/GATEWAY_KEY"}
    assert all(e["api_key"] == "${env:GATEWAY_KEY}" for e in p.entries)


@pytest.mark.parametrize("gateway, expected", [
    ({"backend": "litellm", "fallbacks": {"fast": ["nowhere"]}},
     "deployment.gateway.fallbacks.fast: 'nowhere' is neither a role nor a remote model; known: default, fast, "
     "cloud, gpt, mine"),
    ({"backend": "litellm", "fallbacks": {"ghost": ["default"]}},
     "deployment.gateway.fallbacks.ghost: no role 'ghost'; known: default, fast, cloud"),
    ({"backend": "litellm", "fallbacks": {"fast": ["default"], "default": ["cloud"], "cloud": ["fast"]}},
     "deployment.gateway.fallbacks: a fallback cycle (fast -> default -> cloud -> fast)"),
    ({"backend": "litellm", "fallbacks": {"fast": ["fast"]}},
     "deployment.gateway.fallbacks.fast: a role cannot fall back to itself"),
    ({"backend": "litellm", "install": {"version": "1.107.0"}},
     "deployment.gateway.install.version: litellm 1.107.0 is refused: a compromised release, withdrawn from PyPI"),
    ({"backend": "llama-server"},
     "deployment.gateway.backend: unknown gateway 'llama-server'; known gateways: litellm"),
], ids=["unknown-target", "unknown-role", "cycle", "self", "refused-version", "not-a-gateway"])
def test_bad_gateway_input_is_one_line(farmhand, tmp_path, gateway, expected):
    doc = json.loads(json.dumps(HYBRID))
    doc["deployment"]["gateway"] = gateway
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = farmhand.run("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert expected in one_line_error(proc)
    assert not (farmhand.home / "state" / "runtimes.json").exists()  # nothing started, nothing written


def test_litellm_as_a_runtime_says_where_it_goes(farmhand, tmp_path):
    doc = json.loads(json.dumps(HYBRID))
    doc["deployment"]["runtimes"]["proxy"] = {"backend": "litellm"}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = farmhand.run("plan", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"))
    assert proc.returncode == 2
    assert "deployment.runtimes.proxy.backend: litellm serves no model itself; declare it as deployment.gateway: " \
           "litellm" in one_line_error(proc)

"""What a plan with a llama-server router (`router: true`) produces, pinned: one process for every
role of the runtime, a preset per role named by it (its own file, context, reply cap), memory for
the `models_max` largest only, llamafarm.yaml naming each role's preset; and bad router input as
one line, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml
from checks import one_line_error
from planning import build, host

ROUTER = {
    "deployment": {
        "runtimes": {"llama-server": None, "pool": {"backend": "llama-server", "router": True, "models_max": 2}},
        "roles": {
            "default": {"use": [{"model": "gemma3-270m", "runtime": "pool", "ctx_size": 4096}]},
            "fast": {"use": [{"model": "gemma3-270m", "runtime": "pool", "ctx_size": 1024}]},
            "long": {"use": [{"model": "gemma3-270m", "runtime": "pool", "ctx_size": 2048}],
                     "model_api_parameters": {"max_tokens": 300}}}},
}


def router_plan(tmp_path, overrides=ROUTER):
    return build(tmp_path, host(), profile="cpu-small", overrides=overrides)


def test_one_router_process_serves_each_role_by_name(tmp_path):
    p = router_plan(tmp_path)
    (rt,) = p.selection.runtimes.values()
    assert rt.name == "pool" and [(m.roles, m.ctx_size) for m in rt.models] == [
        (["default"], 4096), (["fast"], 1024), (["long"], 2048)]
    (spec,) = p.renderer.render().runtimes
    preset = tmp_path / "home/state/runtime-files/pool/models.ini"
    assert list(spec.argv[1:9]) == ["--models-preset", str(preset), "--models-max", "2", "--host", "127.0.0.1",
                                    "--port", str(spec.port)]
    assert "-m" not in spec.argv and spec.models == ("default", "fast", "long")
    assert spec.models_url == f"http://127.0.0.1:{spec.port}/models"
    text = p.renderer.files(rt)[preset]
    model = tmp_path / "home/data/models/gemma-3-270m-q4_k_m.gguf"
    assert text.split("\n[", 1)[1] == (
        f"default]\nmodel = {model}\nctx-size = 4096\nn-predict = 1024\nload-on-startup = true\n\n"
        f"[fast]\nmodel = {model}\nctx-size = 1024\nn-predict = 256\nload-on-startup = true\n\n"
        f"[long]\nmodel = {model}\nctx-size = 2048\nn-predict = 300\nload-on-startup = false\n")
    assert [(e["name"], e["model"], e["base_url"]) for e in p.entries] == [
        (r, r, f"http://127.0.0.1:{spec.port}/v1") for r in ("default", "fast", "long")]


def test_memory_counts_the_models_max_largest_only(tmp_path):
    p = router_plan(tmp_path)
    (rt,) = p.selection.runtimes.values()
    sizes = sorted((m.estimate.total for m in rt.models), reverse=True)
    assert rt.used_on("ram") == sum(sizes[:2])  # 4096 + 2048 resident at most, not all three
    one = json.loads(json.dumps(ROUTER))
    one["deployment"]["runtimes"]["pool"]["models_max"] = 1
    (rt1,) = router_plan(tmp_path / "one", one).selection.runtimes.values()
    assert rt1.used_on("ram") == sizes[0]


def test_without_router_each_process_serves_one_model(tmp_path):
    plain = json.loads(json.dumps(ROUTER))
    plain["deployment"]["runtimes"]["pool"] = {"backend": "llama-server"}
    p = router_plan(tmp_path, plain)
    (rt,) = p.selection.runtimes.values()
    assert [m.roles for m in rt.models] == [["default", "fast", "long"]]  # one model, the three roles its aliases


@pytest.mark.parametrize("runtime, expected", [
    ({"backend": "vllm", "router": True}, "deployment.runtimes.pool.router: vllm has no router mode; backends with "
                                          "one: llama-server"),
    ({"backend": "llama-server", "models_max": 2}, "deployment.runtimes.pool.models_max: only for a router "
                                                   "(router: true)"),
    ({"backend": "llama-server", "router": True, "args": ["--models-preset", "/etc/x.ini"]},
     "deployment.runtimes.pool.args: --models-preset is set by farmhand; use router: true"),
], ids=["not-llama-server", "models-max-alone", "own-preset"])
def test_bad_router_input_is_one_line(farmhand, tmp_path, runtime, expected):
    doc = json.loads(json.dumps(ROUTER))
    doc["deployment"]["runtimes"]["pool"] = runtime
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = farmhand.run("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert expected in one_line_error(proc)
    assert not (farmhand.home / "state" / "runtimes.json").exists()

"""What a plan with `backend: llama-cpp-python` produces, pinned: its build shares llama-server's
CPU-level and variant flags (never -march=native) and gets an install key of its own per variant;
it runs llama_cpp.server through farmhand's CORS shim on 127.0.0.1 with the role's context and a
chat format for a GGUF without a template; its key only as ${env:VAR}; bad input as one line."""

from __future__ import annotations

import json

import pytest
from checks import one_line_error
from planning import build, host

from supervisor.backends import get_backend
from supervisor.backends import llama_cpp_python as lcp
from supervisor.backends.llamacpp_build import VARIANT_FLAGS
from supervisor.deployment import RuntimeDecl

PYTHON_RUNTIME = {"deployment": {"runtimes": {"llama-server": None, "py": {"backend": "llama-cpp-python"}},
                                 "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "py",
                                                                "ctx_size": 2048}]}}}}


def live_facts() -> dict:
    from supervisor.facts import hostio, probes

    return {"os": probes.probe_os(hostio.LiveHost()), "cpu": probes.probe_cpu(hostio.LiveHost())}


def spec_for(variant: str, facts=None):
    facts = facts or live_facts()
    return get_backend("llama-cpp-python").install_spec(
        RuntimeDecl("py", "llama-cpp-python", variant, {"method": "pip"}), facts)


def test_build_shares_the_cpu_level_and_variant_flags():
    server = get_backend("llama-server").install_spec(RuntimeDecl("s", "llama-server", "cpu", {"method": "pip"}),
                                                      live_facts())
    spec = spec_for("cpu")
    flags = spec.get("build_env")["CMAKE_ARGS"].split()
    assert flags[0] == "-DLLAVA_BUILD=OFF"  # text only: no multimodal library to build
    level_flags = [f for f in flags if f.startswith("-DGGML_")]
    assert level_flags == [f for f in server.get("build_env")["CMAKE_ARGS"].split() if f.startswith("-DGGML_")]
    assert "-DGGML_NATIVE=OFF" in flags and "-march=native" not in " ".join(flags)
    assert spec.get("cpu_level") == server.get("cpu_level")
    assert "-DBUILD_SHARED_LIBS=OFF" not in flags  # the binding loads libllama.so: the shared build
    assert spec.get("wheel_build") is True and spec.get("package") == "llama-cpp-python"
    assert spec.get("version") == lcp.VERSION
    assert all("==" in p for p in spec.get("with_packages")) and "uvicorn==0.55.0" in spec.get("with_packages")


@pytest.mark.parametrize("variant", ["cuda", "rocm", "vulkan", "metal"])
def test_each_variant_has_its_flags_and_its_own_key(variant):
    spec, cpu = spec_for(variant), spec_for("cpu")
    assert set(VARIANT_FLAGS[variant]) <= set(spec.get("build_env")["CMAKE_ARGS"].split())
    assert spec.key != cpu.key and spec.key.startswith(f"llama-cpp-python-{variant}-pip-")


def test_runs_llama_cpp_server_through_the_cors_shim(tmp_path):
    p = build(tmp_path, host(), profile="cpu-small", overrides=PYTHON_RUNTIME)
    (rt,) = p.selection.runtimes.values()
    (spec,) = p.renderer.render().runtimes
    shim = tmp_path / "home/state/runtime-files/py/serve.py"
    model = tmp_path / "home/data/models/gemma-3-270m-q4_k_m.gguf"
    origins = json.dumps(list(rt.decl.cors_origins))
    assert spec.argv[0].endswith("/venv/bin/python") and list(spec.argv[1:]) == [
        str(shim), origins, "512", "--model", str(model), "--host", "127.0.0.1", "--port", str(spec.port),
        "--model_alias", "gemma3-270m", "--n_ctx", "2048", "--n_gpu_layers", "0"]  # the file's template: not read yet
    assert p.renderer.files(rt) == {shim: lcp.SHIM}
    assert "allow_origins=ORIGINS" in lcp.SHIM and "allow_credentials=False" in lcp.SHIM
    assert spec.readiness_url == f"http://127.0.0.1:{spec.port}/health"  # the shim's, free of the model's lock
    assert [(e["provider"], e["model"], e["base_url"]) for e in p.entries] == [
        ("openai", "gemma3-270m", f"http://127.0.0.1:{spec.port}/v1")]


@pytest.mark.parametrize("arch, has_template, profile_template, expected", [
    ("gemma3", False, None, "gemma"), ("llama", False, None, "llama-3"), ("qwen3", False, None, "chatml"),
    ("mamba", False, None, "chatml"), ("gemma3", True, None, None), ("gemma3", False, "llama3", "llama-3"),
], ids=["gemma-none", "llama-none", "qwen-none", "unknown-arch", "gguf-own", "profile-llama.cpp-name"])
def test_chat_format_for_a_gguf_without_a_template(arch, has_template, profile_template, expected):
    from types import SimpleNamespace

    served = SimpleNamespace(model=SimpleNamespace(chat_template=profile_template),
                             info=SimpleNamespace(architecture=arch, has_chat_template=has_template))
    assert lcp.chat_format(served)[0] == expected


def test_its_key_is_an_env_reference(tmp_path):
    doc = json.loads(json.dumps(PYTHON_RUNTIME))
    doc["deployment"]["runtimes"]["py"] |= {"api_key_env": "PY_KEY", "cors_origins": ["https://app.example"]}
    (spec,) = build(tmp_path, host(), profile="cpu-small", overrides=doc).renderer.render().runtimes
    assert dict(spec.env)["API_KEY"] == "${env:PY_KEY}"
    assert not any("PY_KEY" in a or "api_key" in a for a in spec.argv)
    assert spec.argv[2] == '["https://app.example"]' and spec.argv[3] == "512"


@pytest.mark.parametrize("runtime, expected", [
    ({"backend": "llama-cpp-python", "args": ["--api_key", "x"]},
     "deployment.runtimes.py.args: --api_key is set by farmhand; use deployment.runtimes.NAME.api_key_env"),
    ({"backend": "llama-cpp-python", "env": {"HOST": "0.0.0.0"}},
     "deployment.runtimes.py.env: HOST is set by farmhand; use deployment.runtimes.NAME.host"),
    ({"backend": "llama-cpp-python", "variant": "npu"}, "llama-cpp-python has no variant 'npu'"),
], ids=["key-in-argv", "host-by-env", "unknown-variant"])
def test_bad_input_is_one_line(farmhand, tmp_path, runtime, expected):
    doc = json.loads(json.dumps(PYTHON_RUNTIME))
    doc["deployment"]["runtimes"]["py"] = runtime
    overrides = tmp_path / "o.yaml"
    overrides.write_text(json.dumps(doc))
    proc = farmhand.run("plan", "--profile", "cpu-small", "--overrides", str(overrides))
    assert proc.returncode == 2, proc.stderr
    assert expected in one_line_error(proc)


def test_every_backend_has_a_default_port_of_its_own():
    from supervisor.backends import BACKENDS
    from supervisor.ports import SUPERVISOR_DEFAULT_PORT

    ports = [b.default_port for b in BACKENDS.values()] + [SUPERVISOR_DEFAULT_PORT]
    assert len(ports) == len(set(ports)), {b.name: b.default_port for b in BACKENDS.values()}

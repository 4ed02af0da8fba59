"""Ollama: LlamaFarm's default local runtime on NVIDIA, AMD and Apple hosts.

Install (method `auto`, the default): an Ollama already answering on 127.0.0.1:11434 that
farmhand did not start is used as it is (never modified, stopped or removed); else `ollama`
from PATH; else the official release archive, pinned here (VERSION), unpacked with its layout
(bin/ollama, lib/ollama/) into a versioned directory farmhand owns, the `-rocm` or `-jetpack`
add-on over it where the host needs one, every archive checked against the release's
sha256sum.txt before it is unpacked. `install: {base_url: ...}` or an https mirror serves the
archives without GitHub; `version:` pins another release.

Run: `ollama serve` with OLLAMA_HOST on the plan's port, its store (OLLAMA_MODELS) inside
farmhand's model store, and the loading policy the memory plan decided; ready when
GET /api/version answers 200. It forks a runner per loaded model in its own session, which
the supervisor stops as a whole.

Models live in Ollama's store: ollama://NAME:TAG is pulled through POST /api/pull (through the
Ollama registry mirror when one is configured); a GGUF that farmhand holds (pip, file://,
hf://, https) is imported offline as a blob and created as `farmhand/<model>:latest`, with a
chat template for its architecture when the file has none. See ollama_api.py for the calls.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import sources
from ..deployment import ModelSpec
from ..paths import Paths
from ..ports import LOOPBACK
from .base import (
    USE_CORS,
    USE_HOST,
    Backend,
    Launch,
    LaunchRequest,
    ModelStore,
    ReadinessProbe,
    ServedModel,
    client_host,
)
from .ollama_api import DEFAULT_REGISTRY, OllamaAPI, parse_name, short_name

VERSION = "0.32.15"
RELEASES = "https://github.com/ollama/ollama/releases/download/v{version}"
FIRST_ZSTD = (0, 14, 0)  # releases before this one ship .tgz archives
ARCHES = {"x86_64": "amd64", "arm64": "arm64"}
IMPORT_NAMESPACE = "farmhand"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "ollama"
# Ollama's own templates (templates/ollama/) by GGUF general.architecture, for files without one.
ARCH_TEMPLATES = {
    "gemma": "gemma-instruct", "gemma2": "gemma-instruct", "gemma3": "gemma3-instruct", "gemma3n": "gemma3-instruct",
    "llama": "llama3-instruct", "qwen2": "chatml", "qwen3": "chatml", "qwen2moe": "chatml", "phi3": "phi-3",
    "granite": "granite-instruct", "command-r": "command-r", "falcon": "falcon-instruct",
}
# A profile's `chat_template` names a llama.cpp built-in; the Ollama template that matches it.
BUILTIN_TEMPLATES = {"gemma": "gemma3-instruct", "llama3": "llama3-instruct", "chatml": "chatml", "phi3": "phi-3",
                     "granite": "granite-instruct", "command-r": "command-r", "falcon3": "falcon-instruct"}
FALLBACK_TEMPLATE = "chatml"


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("-")[0].split("."))
    except ValueError:
        return (0,)


def import_name(model: ModelSpec) -> str:
    return f"{IMPORT_NAMESPACE}/{model.name}:latest"


def template_for(model: ModelSpec, info) -> tuple[str | None, str]:
    """(Ollama template name or None for the file's own, why)."""
    if model.chat_template:
        name = BUILTIN_TEMPLATES.get(model.chat_template, FALLBACK_TEMPLATE)
        return name, f"{name} (the profile's {model.chat_template})"
    if info is None:
        return None, "the file's own (its header could not be read)"
    if info.has_chat_template:
        return None, "the GGUF's own"
    arch = info.architecture or "?"
    name = ARCH_TEMPLATES.get(arch, FALLBACK_TEMPLATE)
    return name, f"Ollama's {name} (for its architecture {arch}; the GGUF has none)"


class Ollama(Backend):
    name = "ollama"
    provider = "ollama"
    default_port = 11434
    executable = "ollama"
    variants = ("cuda", "rocm", "metal", "vulkan", "cpu")
    install_methods = ("auto", "archive", "path")
    adopts_running = True
    models_per_process = None
    split = "scheduler"
    own_store = True
    default_ctx = 4096
    supports_api_key = False
    controlled_env = {"OLLAMA_HOST": USE_HOST, "OLLAMA_ORIGINS": USE_CORS,
                      "OLLAMA_MODELS": "models live in farmhand's store",
                      "OLLAMA_MAX_LOADED_MODELS": "the memory plan decides how many models stay loaded",
                      "OLLAMA_KEEP_ALIVE": "the memory plan keeps every planned model loaded",
                      "OLLAMA_CONTEXT_LENGTH": "use the candidate's ctx_size",
                      "OLLAMA_NUM_PARALLEL": "the memory plan sizes one context per model"}

    # --- installation -----------------------------------------------------------------------
    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        if method != "archive":
            return super().install_params(method, variant, facts, declared)
        if declared.get("archives") or declared.get("url"):
            return {"binary": "bin/ollama"}  # the user's own archive list
        version = str(declared.get("version") or VERSION).lstrip("v")
        base = str(declared.get("base_url") or RELEASES.format(version=version)).rstrip("/")
        os_facts = facts.get("os") or {}
        ext = ".tar.zst" if _version_tuple(version) >= FIRST_ZSTD else ".tgz"
        if os_facts.get("system") == "Darwin":
            names, binary = ["ollama-darwin.tgz"], "ollama"
        else:
            arch = ARCHES.get(os_facts.get("arch") or "")
            if arch is None:
                return {"unsupported": f"Ollama publishes no Linux build for {os_facts.get('arch')!r} "
                                       f"(known: {', '.join(ARCHES)})"}
            names, binary = [f"ollama-linux-{arch}{ext}"], "bin/ollama"
            if variant == "rocm":
                names.append(f"ollama-linux-{arch}-rocm{ext}")
            if os_facts.get("jetpack") in (5, 6) and arch == "arm64":
                names.append(f"ollama-linux-{arch}-jetpack{os_facts['jetpack']}{ext}")
        return {"version": version, "binary": binary, "archives": [{"url": f"{base}/{n}"} for n in names],
                "sha256sums": f"{base}/sha256sum.txt"}

    def parse_version(self, text: str) -> str:
        # "ollama version is 0.32.15"; with a different server running, the client's own version
        # is on the warning line: "Warning: client version is 0.32.15".
        for marker in ("client version is", "version is"):
            for line in text.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].strip()
        return super().parse_version(text)

    def running_version(self, url: str) -> str | None:

        return OllamaAPI(url).version()

    # --- models -----------------------------------------------------------------------------
    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources
                if sources.scheme_of(uri) == "ollama" or (model.is_gguf and sources.get(uri).delivers_file(uri))]

    def store_name(self, model: ModelSpec, source: str) -> str:

        if sources.scheme_of(source) == "ollama":
            return short_name(source[len("ollama://"):])
        return import_name(model)  # a file farmhand imports

    def model_id(self, served: ServedModel) -> str:
        return self.store_name(served.model, served.effective_source)

    def model_store(self, url: str) -> ModelStore:
        return OllamaStore(self, url)

    # --- running ----------------------------------------------------------------------------
    def base_url(self, port: int, host: str = LOOPBACK) -> str:
        return f"http://{client_host(host)}:{port}"

    def openai_url(self, port: int, host: str = LOOPBACK) -> str:
        return f"{self.base_url(port, host)}/v1"  # LlamaFarm's ollama provider speaks /api; a gateway speaks /v1

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/api/version")

    def store_dir(self, paths: Paths) -> Path:
        return paths.backend_store("ollama")

    def launch(self, request: LaunchRequest) -> Launch:
        env = {"OLLAMA_HOST": f"{request.decl.host}:{request.port}", "OLLAMA_MODELS": str(self.store_dir(request.paths)),
               # Every model the plan put here fits beside the others: all stay loaded, forever,
               # each with one context of the planned size (the estimate's KV cache).
               "OLLAMA_MAX_LOADED_MODELS": str(len(request.models)), "OLLAMA_KEEP_ALIVE": "-1",
               "OLLAMA_NUM_PARALLEL": "1",
               "OLLAMA_CONTEXT_LENGTH": str(max(m.ctx_size for m in request.models))}
        if request.decl.cors_origins:  # Ollama always allows its loopback and app origins besides these
            env["OLLAMA_ORIGINS"] = ",".join(request.decl.cors_origins)
        env |= self.visible_devices(request) | dict(request.decl.env)
        notes = []
        for served in request.models:
            if served.via_store:
                _, why = template_for(served.model, served.info)
                notes.append(f"{served.model.name}: imported as {import_name(served.model)}, chat template {why}")
        return Launch([request.binary, "serve", *request.decl.args], env, tuple(notes))


class OllamaStore(ModelStore):
    """Ollama's model store, reached through the API of the server at `url`."""

    def __init__(self, backend: Ollama, url: str):

        self.backend, self.url, self.api = backend, url, OllamaAPI(url)

    def present(self) -> dict[str, str]:
        return self.api.tags()

    def loaded(self) -> set[str]:
        return self.api.loaded()

    def pull(self, served: ServedModel, report) -> str:

        name = self.backend.model_id(served)
        host, namespace, model, tag = parse_name(name)
        mirror = sources.mirrors().ollama
        label = f"pull {name}"
        if host != DEFAULT_REGISTRY or not mirror:
            self.api.pull(name, insecure=False, report=report, label=label)
            return f"pulled {name} into ollama at {self.url}"
        # Through the mirror: Ollama names a model by the registry it came from, so pull it
        # under the mirror's name, then give it the name clients use (blobs are shared).
        from urllib.parse import urlparse

        parts = urlparse(mirror)
        via = f"{parts.netloc}{parts.path.rstrip('/')}/{namespace}/{model}:{tag}"
        self.api.pull(via, insecure=parts.scheme == "http", report=report, label=label)
        self.api.copy(short_name(via), name)
        self.api.delete(short_name(via))
        return f"pulled {name} into ollama at {self.url} from the mirror {mirror}"

    def import_file(self, served: ServedModel, path: Path, sha256: str, report) -> str:
        name = import_name(served.model)
        uploaded = False
        if not self.api.has_blob(sha256):
            self.api.push_blob(path, sha256, report=report, label=f"import {served.model.name}")
            uploaded = True
        template, why = template_for(served.model, served.info)
        text = params = None
        if template:
            text = (TEMPLATES / f"{template}.gotmpl").read_text()
            params = json.loads((TEMPLATES / f"{template}.json").read_text())
        self.api.create(name, {path.name: f"sha256:{sha256}"}, text, params)
        how = "uploaded and created" if uploaded else "created from the blob already there"
        return f"imported {path.name} as {name} into ollama at {self.url} ({how}; chat template {why})"

    def load(self, name: str) -> None:
        self.api.load(name)


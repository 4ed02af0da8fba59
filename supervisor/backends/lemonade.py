"""Lemonade (AMD Ryzen AI NPU, and Radeon through its llama.cpp recipes): `lemond` on
LlamaFarm's port 11534, ready on GET /api/v1/health.

Install (method `auto`, the default): a Lemonade already answering on 127.0.0.1:11534 that
farmhand did not start is used as it is (never modified, stopped or removed); else `lemond`
from PATH; else the embeddable release tarball (`lemonade-embeddable-<ver>-ubuntu-x64.tar.gz`:
lemond, the lemonade CLI, resources/), pinned here (VERSION), its sha256 the digest GitHub
publishes for the release asset (or `install: {sha256}`), unpacked by the safe extractor into
a versioned directory farmhand owns.

Run: `lemond` with LEMONADE_HOST/LEMONADE_PORT on the plan's address, its cache and config
(LEMONADE_CACHE_DIR) and the Hugging Face cache it downloads into (HF_HOME) inside farmhand's
store. Models are pulled through POST /api/v1/pull: lemonade://NAME by its registry name, with
the recipe its registry gives: the profile names the model for the host (an `-FLM` model,
recipe `flm`, on an XDNA2 NPU on Linux; a GGUF, recipe `llamacpp`, otherwise), and the
variant sets its default llama.cpp backend (vulkan, rocm or cpu) through LEMONADE_LLAMACPP.
llamafarm.yaml says `provider: lemonade`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import sources
from ..deployment import ModelSpec
from ..paths import Paths
from ..ports import LOOPBACK
from .base import (
    USE_HOST,
    USE_PORT,
    Backend,
    Launch,
    LaunchRequest,
    ModelStore,
    NotAnswering,
    ReadinessProbe,
    ServedModel,
    client_host,
)

VERSION = "11.8.0"
RELEASES = "https://github.com/lemonade-sdk/lemonade/releases/download/v{version}"
RELEASE_API = "https://api.github.com/repos/lemonade-sdk/lemonade/releases/tags/v{version}"
ARCHES = {"x86_64": "x64", "arm64": "arm64"}
XDNA2_NPUS = {"1022:17f0"}  # PCI ids of XDNA2 NPUs (facts/parsers.py NPU_IDS)
# llama.cpp backend Lemonade uses for each variant (the `npu` variant runs FLM models on the NPU).
LLAMACPP_BACKENDS = {"vulkan": "vulkan", "rocm": "rocm", "cpu": "cpu"}


class LemonadeError(NotAnswering):
    """Lemonade answered with an error (or not at all)."""


class Lemonade(Backend):
    name = "lemonade"
    provider = "lemonade"
    default_port = 11534
    executable = "lemond"
    variants = ("npu", "vulkan", "rocm", "cpu")
    install_methods = ("auto", "archive", "path")
    adopts_running = True
    service = "lemond"
    models_per_process = None
    own_store = True
    supports_api_key = False
    start_timeout_s = 120.0
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT}
    controlled_env = {"LEMONADE_HOST": USE_HOST, "LEMONADE_PORT": USE_PORT,
                      "LEMONADE_CACHE_DIR": "its cache lives in farmhand's store",
                      "HF_HOME": "models live in farmhand's store"}

    # --- installation -----------------------------------------------------------------------
    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        params = self._install_params(method, variant, facts, declared)
        if variant == "npu" and not params.get("unsupported"):
            npus = [n for n in facts.get("npus") or [] if str(n.get("pci_id", "")).startswith("1022:")]
            if npus and not any(n.get("pci_id") in XDNA2_NPUS for n in npus):
                params["unsupported"] = (f"Lemonade runs models on the NPU on Linux with FLM, which needs an XDNA2 "
                                         f"NPU (Strix, Krackan); this host has {npus[0].get('name')}")
        return params

    def _install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        if method != "archive":
            return super().install_params(method, variant, facts, declared)
        version = str(declared.get("version") or VERSION).lstrip("v")
        os_facts = facts.get("os") or {}
        arch = ARCHES.get(os_facts.get("arch") or "")
        if os_facts.get("system") not in (None, "Linux") or arch is None:
            return {"unsupported": f"Lemonade's embeddable release is built for Linux on {', '.join(ARCHES)}; this "
                                   f"host is {os_facts.get('system')} {os_facts.get('arch')}"}
        folder = f"lemonade-embeddable-{version}-ubuntu-{arch}"
        if declared.get("url"):
            return {"binary": f"{folder}/lemond"}
        base = str(declared.get("base_url") or RELEASES.format(version=version)).rstrip("/")
        return {"version": version, "binary": f"{folder}/lemond", "url": f"{base}/{folder}.tar.gz",
                # No checksum file is published: the digest GitHub records for the asset.
                "sha256sums": RELEASE_API.format(version=version)}

    def running_version(self, url: str) -> str | None:
        try:
            return LemonadeAPI(url).health().get("version") or "unknown"
        except NotAnswering:
            return None

    def parse_version(self, text: str) -> str:
        for token in text.replace(",", " ").split():
            if token[:1].isdigit() and "." in token:
                return token.lstrip("v")
        return super().parse_version(text)

    # --- models -----------------------------------------------------------------------------
    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources if sources.scheme_of(uri) == "lemonade"]

    def store_name(self, model: ModelSpec, source: str) -> str:
        return source[len("lemonade://"):] if sources.scheme_of(source) == "lemonade" else model.name

    def model_id(self, served: ServedModel) -> str:
        return self.store_name(served.model, served.effective_source)

    def model_store(self, url: str) -> ModelStore:
        return LemonadeStore(self, url)

    def store_dir(self, paths: Paths) -> Path:
        return paths.backend_store("lemonade")

    # --- running ----------------------------------------------------------------------------
    def base_url(self, port: int, host: str = LOOPBACK) -> str:
        return f"http://{client_host(host)}:{port}/api/v1"

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/api/v1/health")

    def launch(self, request: LaunchRequest) -> Launch:
        env = {"LEMONADE_HOST": request.decl.host, "LEMONADE_PORT": str(request.port),
               "LEMONADE_CACHE_DIR": str(self.store_dir(request.paths)), "HF_HOME": str(request.paths.hf_home)}
        if request.mirrors.hf:  # Lemonade downloads models itself: through the site's mirror too
            env["HF_ENDPOINT"] = request.mirrors.hf
        if request.decl.variant in LLAMACPP_BACKENDS:  # Lemonade's default llama.cpp backend
            env["LEMONADE_LLAMACPP"] = LLAMACPP_BACKENDS[request.decl.variant]
        env |= self.visible_devices(request) | dict(request.decl.env)
        recipe = "flm on the NPU" if request.decl.variant == "npu" else \
            f"llamacpp with its {LLAMACPP_BACKENDS.get(request.decl.variant, 'cpu')} backend"
        return Launch([request.binary, *request.decl.args], env, (f"{request.name}: models run with {recipe}",))


class LemonadeAPI:
    """The Lemonade server's own endpoints that farmhand uses (docs/backends.md)."""

    def __init__(self, url: str, timeout: float = 5.0):
        self.root = url.rstrip("/").removesuffix("/api/v1")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None, stream=False):
        import requests

        try:
            resp = requests.request(method, f"{self.root}/api/v1/{path}", json=body, stream=stream,
                                    timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise NotAnswering(f"lemonade at {self.root}: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            raise LemonadeError(f"lemonade {path}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp

    def health(self) -> dict:
        return self._call("GET", "health").json()

    def models(self) -> list[dict]:
        return self._call("GET", "models").json().get("data", [])

    def pull(self, name: str, report, label: str) -> None:
        """POST /api/v1/pull with stream=true: SSE `progress` events, then `complete` or `error`."""
        resp = self._call("POST", "pull", {"model_name": name, "stream": True}, timeout=(5, 600), stream=True)
        event = None
        for raw in resp.iter_lines(decode_unicode=True):
            if raw.startswith("event:"):
                event = raw.split(":", 1)[1].strip()
            elif raw.startswith("data:"):
                data = json.loads(raw.split(":", 1)[1] or "{}")
                if event == "progress" and data.get("percent") is not None:
                    report.progress(label, float(data["percent"]) / 100, str(data.get("file") or ""))
                elif event == "error":
                    raise LemonadeError(f"lemonade could not pull {name}: {data.get('error') or data}")
                elif event == "complete":
                    report.progress(label, 1.0, "done")
                    return
        raise LemonadeError(f"lemonade's pull of {name} ended without completing")

    def load(self, name: str, options: dict) -> None:
        answer = self._call("POST", "load", {"model_name": name, **options}, timeout=600).json()
        if answer.get("status") == "error":
            raise LemonadeError(f"lemonade could not load {name}: {answer.get('message')}")


class LemonadeStore(ModelStore):
    """Lemonade's model store, through the API of the server at `url`."""

    def __init__(self, backend: Lemonade, url: str):
        self.backend, self.url, self.api = backend, url, LemonadeAPI(url)

    def present(self) -> dict[str, str]:
        return {m["id"]: str(m.get("checkpoint", "")) for m in self.api.models() if m.get("downloaded", True)}

    def loaded(self) -> set[str]:
        return {m.get("model_name") for m in self.api.health().get("all_models_loaded", [])}

    def pull(self, served: ServedModel, report) -> str:
        name = self.backend.model_id(served)
        self.api.pull(name, report, f"pull {name}")
        return f"pulled {name} into lemonade at {self.url}"

    def load(self, name: str) -> None:
        self.api.load(name, {})

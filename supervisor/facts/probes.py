"""Probes: how each fact is read from a Host, turned into facts by the pure parsers.

Every probe has a timeout and never raises: a missing tool, a hang or unparsable output becomes
a recorded reason ("nvidia-smi: not installed"). gather() runs the probes concurrently and
returns the snapshot as a plain JSON-serialisable dict (the `farmhand detect --json` shape).
"""

from __future__ import annotations

import platform
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

from ..cpulevel import norm_arch
from . import parsers as P
from .hostio import Host

PROBE_TIMEOUT = 2.0  # per command; `detect` as a whole is bounded by the slowest probe
FACTS_SCHEMA = 1
GIB = 1024**3

NVIDIA_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
]
ROCM_SMI = ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"]
AMD_SMI = ["amd-smi", "static", "--json"]


def probe_os(host: Host) -> dict:
    system = host.value("platform.system", platform.system)
    facts: dict = {
        "system": system,
        "arch": _norm_arch(host.value("platform.machine", platform.machine)),
        "kernel": host.value("platform.release", platform.release),
        "wsl": None,
        "container": None,
        "distro": None,
        "macos_version": None,
        "glibc": None,
        "init": "unknown",
        "package_manager": host.value("package_manager", _package_manager),
        "notes": [],
    }
    if system == "Darwin":
        res = host.run(["sw_vers", "-productVersion"], PROBE_TIMEOUT)
        facts["macos_version"] = res.stdout.strip() if res.ok else None
        facts["init"] = "launchd"
        return facts
    text = host.read("/etc/os-release") or host.read("/usr/lib/os-release")
    if text:
        try:
            facts["distro"] = P.parse_os_release(text)
        except P.ParseError as exc:
            facts["notes"].append(f"/etc/os-release: {exc}")
    version = host.read("/proc/version")
    if version:
        try:
            parsed = P.parse_proc_version(version)
            facts["kernel"], facts["wsl"] = parsed["kernel"], parsed["wsl"]
        except P.ParseError as exc:
            facts["notes"].append(f"/proc/version: {exc}")
    tegra = host.read("/etc/nv_tegra_release")
    if tegra:
        try:
            facts["jetpack"] = P.parse_nv_tegra_release(tegra)
        except P.ParseError as exc:
            facts["notes"].append(f"/etc/nv_tegra_release: {exc}")
    if host.read("/.dockerenv") is not None:
        facts["container"] = "docker"
    elif host.read("/run/.containerenv") is not None:
        facts["container"] = "podman"
    else:
        facts["container"] = P.parse_cgroup(host.read("/proc/1/cgroup") or "")
    facts["init"] = "systemd" if host.listdir("/run/systemd/system") is not None else "other"
    ldd = host.run(["ldd", "--version"], PROBE_TIMEOUT)
    facts["glibc"] = P.parse_ldd_version(ldd.stdout) if ldd.ok else None
    return facts


def probe_cpu(host: Host) -> dict:
    text = host.read("/proc/cpuinfo")
    info = None
    if text:
        try:
            info = P.parse_proc_cpuinfo(text)
        except P.ParseError:
            info = None
    if info is None:
        # No /proc/cpuinfo (macOS, BSD): py-cpuinfo knows those platforms. It is slow (~1 s),
        # which is why Linux reads /proc/cpuinfo through the recordable seam instead.
        raw = host.value("cpuinfo", _py_cpuinfo) or {}
        info = {"model": raw.get("brand_raw"), "flags": raw.get("flags", []),
                "logical_cores": raw.get("count"), "physical_cores": None}
        if not info["model"]:
            brand = host.run(["sysctl", "-n", "machdep.cpu.brand_string"], PROBE_TIMEOUT)
            info["model"] = brand.stdout.strip() if brand.ok else None
    counts = host.value("psutil.cpu_count", _psutil_cpu_counts) or {}
    return {
        "model": info["model"],
        "logical_cores": counts.get("logical") or info["logical_cores"],
        "physical_cores": counts.get("physical") or info["physical_cores"],
        "isa": P.parse_cpu_flags(info["flags"]),
        **P.parse_cpu_level(_norm_arch(host.value("platform.machine", platform.machine)), info["flags"]),
    }


def probe_memory(host: Host) -> dict:
    mem = host.value("psutil.virtual_memory", _psutil_memory) or {}
    total = mem.get("total")
    if total is None:
        res = host.run(["sysctl", "-n", "hw.memsize"], PROBE_TIMEOUT)
        total = P.parse_int(res.stdout) if res.ok else None
    return {"total_bytes": total, "available_bytes": mem.get("available", total)}


def probe_disk(host: Host, path: str) -> dict:
    usage = host.value("psutil.disk_usage", lambda: _psutil_disk(path)) or {}
    return {"path": usage.get("path", path), "free_bytes": usage.get("free"), "total_bytes": usage.get("total")}


def probe_nvidia(host: Host) -> dict:
    res = host.run(NVIDIA_QUERY, PROBE_TIMEOUT)
    if not res.ok:
        known = P.nvidia_failure(f"{res.stdout or ''}\n{res.stderr or ''}")
        return {"gpus": [], "reason": f"nvidia-smi: {known}" if known else res.why_not()}
    try:
        gpus = P.parse_nvidia_query(res.stdout)
    except P.ParseError as exc:
        return {"gpus": [], "reason": f"nvidia-smi: unparsable output ({exc})"}
    banner = host.run(["nvidia-smi"], PROBE_TIMEOUT)
    cuda = None
    if banner.ok:
        try:
            cuda = P.parse_nvidia_banner(banner.stdout)["cuda_version"]
        except P.ParseError:
            cuda = None
    for gpu in gpus:
        gpu["cuda_version"] = cuda
        gpu["source"] = "nvidia-smi"
    return {"gpus": gpus, "reason": None}


def probe_amd(host: Host) -> dict:
    gpus: list[dict] = []
    reasons = []
    for argv, parse in ((AMD_SMI, P.parse_amd_smi_static), (ROCM_SMI, P.parse_rocm_smi)):
        res = host.run(argv, PROBE_TIMEOUT)
        if res.ok:
            try:
                gpus = parse(res.stdout)
                for gpu in gpus:
                    gpu["source"] = argv[0]
                break
            except P.ParseError as exc:
                reasons.append(f"{argv[0]}: unparsable output ({exc})")
        else:
            reasons.append(res.why_not())
    # The KFD topology names each GPU's gfx target even without the ROCm tools installed.
    targets = []
    for node in host.listdir("/sys/class/kfd/kfd/topology/nodes") or []:
        text = host.read(f"/sys/class/kfd/kfd/topology/nodes/{node}/properties")
        if text:
            try:
                parsed = P.parse_kfd_properties(text)
            except P.ParseError:
                continue
            if parsed and parsed["gfx_target"]:
                targets.append(parsed["gfx_target"])
    for position, gpu in enumerate(gpus):
        if not gpu.get("gfx_target") and position < len(targets):
            gpu["gfx_target"] = targets[position]
    return {"gpus": gpus, "kfd_targets": targets, "reason": None if gpus else "; ".join(reasons)}


def probe_pci(host: Host) -> dict:
    """PCI display devices and NPUs: from sysfs when readable, else `lspci -nn`."""
    devices = []
    root = "/sys/bus/pci/devices"
    names = host.listdir(root)
    if names is not None:
        for name in names:
            vendor = host.read(f"{root}/{name}/vendor")
            klass = host.read(f"{root}/{name}/class")
            if vendor is None or klass is None:
                continue
            try:
                vendor_id, class_code = P.parse_sysfs_pci_device(vendor, klass)
            except P.ParseError:
                continue
            if class_code in P.DISPLAY_CLASSES or class_code.startswith("11") or class_code == "1200":
                device = (host.read(f"{root}/{name}/device") or "0x0000").strip().lower()[2:]
                devices.append({"slot": name, "class_code": class_code, "description": "",
                                "vendor_id": vendor_id, "device_id": device})
        source = "sysfs"
    else:
        res = host.run(["lspci", "-nn"], PROBE_TIMEOUT)
        if not res.ok:
            return {"gpus": [], "npus": [], "reason": f"no /sys/bus/pci and {res.why_not()}", "source": None}
        devices = P.parse_lspci_nn(res.stdout)
        source = "lspci"
    gpus, npus = P.pci_accelerators(devices)
    drivers = {
        "amdxdna": host.listdir("/sys/bus/pci/drivers/amdxdna") is not None,
        "accel": bool(host.listdir("/dev/accel")),
        "i915": host.listdir("/sys/bus/pci/drivers/i915") is not None,
        "xe": host.listdir("/sys/bus/pci/drivers/xe") is not None,
    }
    return {"gpus": gpus, "npus": npus, "drivers": drivers, "reason": None, "source": source}


def probe_drm_vram(host: Host) -> dict:
    """Per-card VRAM from amdgpu's sysfs (works without ROCm)."""
    cards = {}
    for name in host.listdir("/sys/class/drm") or []:
        if not name.startswith("card") or "-" in name:
            continue
        vram = host.read(f"/sys/class/drm/{name}/device/mem_info_vram_total")
        vendor = host.read(f"/sys/class/drm/{name}/device/vendor")
        if vram and vendor:
            try:
                cards[name] = {"vendor_id": vendor.strip().lower()[2:], "vram_bytes": P.parse_int(vram)}
            except P.ParseError:
                continue
    return {"cards": cards}


def probe_apple(host: Host) -> dict:
    brand = host.run(["sysctl", "-n", "machdep.cpu.brand_string"], PROBE_TIMEOUT)
    mem = host.run(["sysctl", "-n", "hw.memsize"], PROBE_TIMEOUT)
    if not (brand.ok and mem.ok):
        return {"gpus": [], "reason": (brand if not brand.ok else mem).why_not()}
    name = brand.stdout.strip()
    if not name.startswith("Apple"):
        return {"gpus": [], "reason": f"not Apple Silicon ({name})"}
    total = P.parse_int(mem.stdout)
    # Metal may wire about 2/3 of unified memory below 36 GB and 3/4 above (macOS's default
    # iogpu.wired_limit); that is the budget a model must fit.
    usable = int(total * (0.75 if total > 36 * GIB else 2 / 3))
    return {"gpus": [{"vendor": "apple", "index": 0, "name": name, "vram_bytes": usable,
                      "unified_memory": True, "metal": True, "source": "sysctl"}], "reason": None}


def probe_vulkan(host: Host) -> dict:
    res = host.run(["vulkaninfo", "--summary"], PROBE_TIMEOUT)
    if not res.ok:
        return {"devices": [], "reason": res.why_not()}
    return {"devices": P.parse_vulkaninfo_summary(res.stdout), "reason": None}


# Tools the install methods need (compilers, GPU toolkits) and backends a host may already have.
TOOLS = ("cc", "c++", "make", "nvcc", "hipcc", "glslc", "xcrun", "ollama", "llama-server", "vllm",
         "lemonade-server", "lemond", "systemctl", "uv")


def probe_tools(host: Host) -> dict:
    """{tool: path or None} for TOOLS; None as a whole in recordings made before it existed."""
    tools = host.value("tools", _which_tools)
    toolkits = {}
    if tools and tools.get("nvcc"):  # a CUDA build must not be newer than the driver it runs on
        res = host.run([tools["nvcc"], "--version"], PROBE_TIMEOUT)
        toolkits["cuda"] = P.parse_nvcc_version(res.stdout) if res.ok else None
    return {"tools": tools, "toolkits": toolkits}


def _which_tools() -> dict:
    import shutil

    return {tool: shutil.which(tool) for tool in TOOLS}


def gather(host: Host, disk_path: str = "/", probes: set[str] | None = None) -> dict:
    """Run every probe concurrently and merge them into one snapshot."""
    system = host.value("platform.system", platform.system)
    table: dict[str, Callable[[], dict]] = {
        "os": lambda: probe_os(host),
        "cpu": lambda: probe_cpu(host),
        "memory": lambda: probe_memory(host),
        "disk": lambda: probe_disk(host, disk_path),
        "tools": lambda: probe_tools(host),
    }
    if system == "Darwin":
        table["apple"] = lambda: probe_apple(host)
    else:
        table |= {
            "nvidia": lambda: probe_nvidia(host),
            "amd": lambda: probe_amd(host),
            "pci": lambda: probe_pci(host),
            "drm": lambda: probe_drm_vram(host),
            "vulkan": lambda: probe_vulkan(host),
        }
    if probes is not None:
        table = {k: v for k, v in table.items() if k in probes}
    results: dict[str, dict] = {}
    timings: dict[str, dict] = {}
    # Each command already has its own timeout; the executor's deadline also bounds a probe
    # stuck anywhere else (a hung sysfs read), so detect always completes.
    pool = ThreadPoolExecutor(max_workers=len(table), thread_name_prefix="probe")
    started = {name: time.perf_counter() for name in table}
    futures = {pool.submit(_timed, fn): name for name, fn in table.items()}
    done, pending = wait(futures, timeout=PROBE_TIMEOUT * 3 + 1)
    for future in done:
        name = futures[future]
        try:
            results[name], elapsed = future.result()
            timings[name] = {"ms": round(elapsed * 1000, 1), "ok": True}
        except Exception as exc:  # a probe bug must not take detect down; it becomes a fact
            results[name] = {"reason": f"probe failed: {type(exc).__name__}: {exc}"}
            timings[name] = {"ms": round((time.perf_counter() - started[name]) * 1000, 1), "ok": False}
    for future in pending:
        name = futures[future]
        results[name] = {"reason": "probe timed out"}
        timings[name] = {"ms": round((time.perf_counter() - started[name]) * 1000, 1), "ok": False}
    pool.shutdown(wait=False, cancel_futures=True)
    return assemble(results, timings)


def _timed(fn: Callable[[], dict]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def assemble(results: dict[str, dict], timings: dict[str, dict]) -> dict:
    """Merge per-probe results into the snapshot: one GPU list, with the reasons kept."""
    gpus: list[dict] = []
    notes: list[str] = []
    nvidia = results.get("nvidia", {})
    amd = results.get("amd", {})
    pci = results.get("pci", {})
    gpus += nvidia.get("gpus", [])
    amd_gpus = amd.get("gpus", [])
    drm = results.get("drm", {}).get("cards", {})
    for pci_gpu in pci.get("gpus", []):
        vendor = pci_gpu["vendor"]
        if vendor == "nvidia" and not nvidia.get("gpus"):
            gpus.append(pci_gpu | {"driver": None, "vram_bytes": None, "source": pci.get("source"),
                                   "note": "NVIDIA GPU present, no driver (" + (nvidia.get("reason") or "?") + ")"})
        elif vendor == "amd" and not amd_gpus:
            gpus.append(pci_gpu | {"vram_bytes": None, "gfx_target": None, "source": pci.get("source")})
        elif vendor == "intel":
            drivers = pci.get("drivers", {})
            gpus.append(pci_gpu | {"vram_bytes": None, "driver": "xe" if drivers.get("xe") else
                                   "i915" if drivers.get("i915") else None, "source": pci.get("source")})
    gpus += amd_gpus
    # Fill AMD VRAM and gfx targets from sysfs when the SMI tools were missing.
    amd_cards = [c for c in drm.values() if c["vendor_id"] == "1002"]
    targets = list(amd.get("kfd_targets", []))
    for gpu in (g for g in gpus if g["vendor"] == "amd"):
        if gpu.get("vram_bytes") is None and amd_cards:
            gpu["vram_bytes"] = amd_cards.pop(0)["vram_bytes"]
        if not gpu.get("gfx_target") and targets:
            gpu["gfx_target"] = targets.pop(0)
    gpus += results.get("apple", {}).get("gpus", [])
    for gpu in gpus:
        if gpu["vendor"] == "amd":
            gpu["rocm_supported"] = gpu.get("gfx_target") in P.ROCM_TARGETS
        gpu["vulkan"] = bool(results.get("vulkan", {}).get("devices"))
    for name in ("nvidia", "amd", "pci", "apple", "vulkan"):
        reason = results.get(name, {}).get("reason")
        if reason:
            notes.append(f"{name}: {reason}")
    os_facts = results.get("os", {"reason": "no os probe"})
    notes += os_facts.pop("notes", []) if isinstance(os_facts, dict) else []
    return {
        "schema": FACTS_SCHEMA,
        "os": os_facts,
        "cpu": results.get("cpu", {}),
        "memory": results.get("memory", {}),
        "disk": results.get("disk", {}),
        "gpus": gpus,
        "npus": pci.get("npus", []) if pci.get("drivers", {}).get("amdxdna") or pci.get("drivers", {}).get("accel")
        else [n | {"note": "no NPU driver loaded"} for n in pci.get("npus", [])],
        "tools": results.get("tools", {}).get("tools"),
        "toolkits": results.get("tools", {}).get("toolkits") or {},
        "notes": notes,
        "probes": timings,
    }


def _norm_arch(machine: str) -> str:

    return norm_arch(machine)


def _package_manager() -> str | None:
    import shutil

    for tool in ("apt-get", "dnf", "yum", "pacman", "zypper", "apk", "brew"):
        if shutil.which(tool):
            return tool
    return None


def _py_cpuinfo() -> dict:
    import cpuinfo

    info = cpuinfo.get_cpu_info()
    return {k: info.get(k) for k in ("brand_raw", "flags", "count", "arch")}


def _psutil_cpu_counts() -> dict:
    import psutil

    return {"logical": psutil.cpu_count(), "physical": psutil.cpu_count(logical=False)}


def _psutil_memory() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"total": vm.total, "available": vm.available}


def _psutil_disk(path: str) -> dict:
    import os

    import psutil

    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    usage = psutil.disk_usage(probe or "/")
    return {"path": probe, "free": usage.free, "total": usage.total}

"""Pure parsers: text a host produced -> facts. No I/O here; every function is tested on
recorded real output (tests/test_parsers.py, ../shared/fixtures/hw, tests/fixtures/hw)."""

from __future__ import annotations

import csv
import io
import json
import re

from .. import cpulevel

MIB = 1024 * 1024

PCI_VENDORS = {"10de": "nvidia", "1002": "amd", "1022": "amd", "8086": "intel", "106b": "apple"}
DISPLAY_CLASSES = {"0300", "0302", "0380"}
# Neural processing units by PCI id: AMD XDNA (Phoenix/Hawk Point, Strix/Krackan) and Intel NPU.
NPU_IDS = {
    "1022:1502": "AMD XDNA NPU (Phoenix/Hawk Point)",
    "1022:17f0": "AMD XDNA2 NPU (Strix/Krackan)",
    "8086:7e4c": "Intel NPU (Meteor Lake)",
    "8086:643e": "Intel NPU (Lunar Lake)",
    "8086:ad1d": "Intel NPU (Arrow Lake)",
}


class ParseError(ValueError):
    """Output that does not have the shape its parser expects."""


def parse_os_release(text: str) -> dict:
    """/etc/os-release: shell-style KEY=value lines."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        values[key.strip()] = raw
    if "ID" not in values:
        raise ParseError("no ID= line")
    return {
        "id": values["ID"],
        "id_like": values.get("ID_LIKE", "").split(),
        "version_id": values.get("VERSION_ID", ""),
        "pretty_name": values.get("PRETTY_NAME", values.get("NAME", values["ID"])),
    }


def parse_proc_version(text: str) -> dict:
    """/proc/version: the kernel release and whether it is WSL (1 or 2)."""
    m = re.match(r"Linux version (\S+)", text)
    if not m:
        raise ParseError("not a Linux /proc/version")
    release = m.group(1)
    wsl = None
    lowered = text.lower()
    if "microsoft" in lowered:
        wsl = 2 if ("wsl2" in lowered or "microsoft-standard" in lowered) else 1
    return {"kernel": release, "wsl": wsl}


def parse_nv_tegra_release(text: str) -> int | None:
    """/etc/nv_tegra_release on NVIDIA Jetson: the JetPack major version its L4T release means
    (R35 -> 5, R36 -> 6); None for a release Ollama ships no add-on for."""
    m = re.match(r"#\s*R(\d+)\s*\(release\)", text)
    if not m:
        raise ParseError("not an /etc/nv_tegra_release")
    return {35: 5, 36: 6}.get(int(m.group(1)))


def parse_nvidia_query(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap
    --format=csv,noheader,nounits`. Tolerates the header+units form (`--format=csv`), where
    columns are named by the header and values carry ' MiB'."""
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = None
    if not rows[0][0].strip().isdigit() and "name" in [c.strip().split(" ")[0] for c in rows[0]]:
        header = [c.strip().split(" [")[0] for c in rows[0]]
        rows = rows[1:]
    columns = header or ["index", "name", "memory.total", "memory.free", "driver_version", "compute_cap"]
    gpus = []
    for position, row in enumerate(rows):
        if len(row) < len(columns):
            raise ParseError(f"row {position + 1}: {len(row)} fields, expected {len(columns)}")
        rec = {k: v.strip() for k, v in zip(columns, row)}

        def mib(field: str, rec: dict = rec) -> int | None:
            raw = rec.get(field)
            if raw is None or raw in ("[N/A]", "N/A", ""):
                return None
            return int(float(raw.split()[0])) * MIB

        gpus.append(
            {
                "vendor": "nvidia",
                "index": int(rec.get("index", position)),
                "name": rec["name"],
                "vram_bytes": mib("memory.total"),
                "vram_free_bytes": mib("memory.free"),
                "driver": rec.get("driver_version"),
                "compute_capability": rec.get("compute_cap"),
            }
        )
    return gpus


MISMATCH = "driver/library version mismatch (reboot or reinstall the driver)"


def nvidia_failure(text: str) -> str | None:
    """Why nvidia-smi failed, in words a person can act on, from what it printed (None: unknown)."""
    if "Driver/library version mismatch" in text:
        return MISMATCH  # the kernel module and the userspace library are from different driver versions
    if "couldn't communicate with the NVIDIA driver" in text:
        return "NVIDIA driver not loaded"
    return None


def parse_nvidia_banner(text: str) -> dict:
    """Plain `nvidia-smi`: the driver and CUDA versions live only in its banner."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    if not driver:
        if "couldn't communicate with the NVIDIA driver" in text:
            raise ParseError("NVIDIA driver not loaded")
        raise ParseError("no 'Driver Version' in nvidia-smi output")
    return {"driver": driver.group(1), "cuda_version": cuda.group(1) if cuda else None}


def _amd_series(card: dict) -> str:
    for key in ("Card Series", "Card series", "Card SKU", "Card model"):
        if card.get(key):
            return card[key]
    return "AMD GPU"


def parse_nvcc_version(text: str) -> str | None:
    """`nvcc --version` -> the CUDA toolkit's version, from "Cuda compilation tools, release 13.0, V13.0.88"."""
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def parse_list_devices(text: str) -> tuple[list[dict], list[str]]:
    """`llama-server --list-devices` -> (devices, error lines). A device line reads
    "  CUDA0: NVIDIA H100 80GB HBM3 (81079 MiB, 80552 MiB free)"; a build that finds none prints
    "  (none)", after its backend's error ("ggml_cuda_init: failed to initialize CUDA: ...")."""
    devices, errors, listing = [], [], False
    for line in text.splitlines():
        if line.strip() == "Available devices:":
            listing = True
            continue
        m = re.match(r"^\s+([A-Za-z]+)(\d+): (.*?)(?: \((\d+) MiB, (\d+) MiB free\))?\s*$", line) if listing else None
        if m:
            devices.append({"id": f"{m.group(1)}{m.group(2)}", "backend": m.group(1), "name": m.group(3),
                            "total_mib": int(m.group(4)) if m.group(4) else None,
                            "free_mib": int(m.group(5)) if m.group(5) else None})
        elif re.search(r"(^|\s)E |error|failed", line, re.IGNORECASE) and not listing:
            errors.append(re.sub(r"^[\d.]+ E ", "", line.strip()))
    return devices, errors


def parse_rocm_smi(text: str) -> list[dict]:
    """`rocm-smi --showproductname --showmeminfo vram --json`; key spelling varies by release."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc.msg}") from None
    gpus = []
    for key in sorted((k for k in data if k.startswith("card")), key=lambda k: int(k[4:] or 0)):
        card = data[key]
        vram = card.get("VRAM Total Memory (B)")
        gpus.append(
            {
                "vendor": "amd",
                "index": int(key[4:] or 0),
                "name": _amd_series(card),
                "vram_bytes": int(vram) if vram else None,
                "gfx_target": card.get("GFX Version"),
                "driver": data.get("system", {}).get("Driver version"),
            }
        )
    return gpus


def parse_amd_smi_static(text: str) -> list[dict]:
    """`amd-smi static --json`: a list of GPUs (newer releases wrap it in {"gpu_data": [...]})."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc.msg}") from None
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    gpus = []
    for entry in data:
        asic = entry.get("asic", {})
        size = entry.get("vram", {}).get("size", {})
        unit = str(size.get("unit", "MB")).upper()
        scale = {"MB": MIB, "MIB": MIB, "GB": 1024 * MIB, "B": 1}.get(unit, MIB)
        value = size.get("value")
        gpus.append(
            {
                "vendor": "amd",
                "index": int(entry.get("gpu", len(gpus))),
                "name": asic.get("market_name", "AMD GPU"),
                "vram_bytes": int(value) * scale if isinstance(value, (int, float)) else None,
                "gfx_target": asic.get("target_graphics_version"),
                "driver": entry.get("driver", {}).get("version"),
            }
        )
    return gpus


def parse_kfd_properties(text: str) -> dict | None:
    """A KFD topology node's properties. Returns None for CPU nodes (simd_count 0)."""
    props = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            props[parts[0]] = parts[1]
    if "simd_count" not in props:
        raise ParseError("no simd_count")
    if int(props["simd_count"]) == 0:
        return None
    version = int(props.get("gfx_target_version", "0"))
    # gfx_target_version is major*10000 + minor*100 + stepping, printed as gfx{major}{minor:x}{step:x}.
    major, minor, step = version // 10000, (version // 100) % 100, version % 100
    return {
        "gfx_target": f"gfx{major}{minor:x}{step:x}" if version else None,
        "vendor_id": int(props.get("vendor_id", "0")),
        "device_id": int(props.get("device_id", "0")),
        "local_mem_bytes": int(props.get("local_mem_size", "0")),
    }


_LSPCI = re.compile(
    r"^(?P<slot>\S+)\s+(?P<klass>[^\[]+?)\s+\[(?P<class_code>[0-9a-f]{4})\]:\s+(?P<desc>.*?)\s+"
    r"\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\]",
    re.IGNORECASE,
)


def parse_lspci_nn(text: str) -> list[dict]:
    """`lspci -nn`: every device with its class code and vendor:device ids."""
    devices = []
    for line in text.splitlines():
        m = _LSPCI.match(line.strip())
        if m:
            devices.append(
                {
                    "slot": m["slot"],
                    "class_code": m["class_code"].lower(),
                    "description": m["desc"],
                    "vendor_id": m["vendor"].lower(),
                    "device_id": m["device"].lower(),
                }
            )
    return devices


def pci_accelerators(devices: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split PCI devices into display GPUs and NPUs, by class code and known ids."""
    gpus, npus = [], []
    for dev in devices:
        ident = f"{dev['vendor_id']}:{dev['device_id']}"
        if ident in NPU_IDS:
            npus.append({"vendor": PCI_VENDORS.get(dev["vendor_id"], dev["vendor_id"]), "name": NPU_IDS[ident],
                         "pci_id": ident, "slot": dev.get("slot")})
        elif dev["class_code"] in DISPLAY_CLASSES and dev["vendor_id"] in PCI_VENDORS:
            name = dev.get("description", "")
            bracket = re.findall(r"\[([^\]]+)\]", name)
            gpus.append({"vendor": PCI_VENDORS[dev["vendor_id"]], "name": bracket[-1] if bracket else name,
                         "pci_id": ident, "slot": dev.get("slot")})
    return gpus, npus


def parse_sysfs_pci_device(vendor: str, klass: str) -> tuple[str, str] | None:
    """/sys/bus/pci/devices/*/vendor and class ("0x10de", "0x030000") -> ("10de", "0300")."""
    vendor, klass = vendor.strip().lower(), klass.strip().lower()
    if not vendor.startswith("0x") or not klass.startswith("0x"):
        raise ParseError("sysfs ids are hex with 0x")
    return vendor[2:], klass[2:6]


def parse_int(text: str) -> int:
    """A file or command that prints one integer (sysctl hw.memsize, mem_info_vram_total)."""
    try:
        return int(text.strip().split()[0], 0)
    except (ValueError, IndexError):
        raise ParseError(f"not an integer: {text.strip()[:40]!r}") from None


def parse_vulkaninfo_summary(text: str) -> list[dict]:
    """`vulkaninfo --summary`: one entry per physical device (name, type, driver)."""
    devices, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if re.match(r"^GPU\d+:$", line):
            current = {}
            devices.append(current)
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return [
        {"name": d.get("deviceName"), "type": d.get("deviceType"), "driver": d.get("driverName"),
         "api_version": d.get("apiVersion")}
        for d in devices
    ]


def parse_cgroup(text: str) -> str | None:
    """/proc/1/cgroup: the container runtime, if PID 1 lives in one."""
    for token in ("docker", "kubepods", "containerd", "libpod", "lxc"):
        if token in text:
            return {"kubepods": "kubernetes", "libpod": "podman"}.get(token, token)
    return None


def parse_ldd_version(text: str) -> str | None:
    """`ldd --version` first line: 'ldd (Debian GLIBC 2.36-9) 2.36'."""
    first = text.splitlines()[0] if text else ""
    m = re.search(r"(\d+\.\d+)\s*$", first)
    return m.group(1) if m and ("GLIBC" in first.upper() or "GNU" in first.upper()) else None


def parse_cpu_flags(flags: list[str]) -> dict:
    """py-cpuinfo's flag list -> the instruction sets backends care about."""
    have = set(flags)
    return {
        "avx": "avx" in have,
        "avx2": "avx2" in have,
        "avx512": any(f.startswith("avx512") for f in have),
        "amx": any(f.startswith("amx") for f in have),
        "neon": "neon" in have or "asimd" in have,
        "f16c": "f16c" in have,
        "fma": "fma" in have,
    }


def parse_cpu_level(arch: str, flags: list[str]) -> dict:
    """The named CPU level a build for this host may assume, and the flags that decide levels."""

    relevant = {f for lv in cpulevel.levels_of(arch) for f in lv.flags}
    return {"level": cpulevel.host_level(arch, flags), "level_flags": sorted(relevant & set(flags))}


# ROCm's supported gfx targets (ROCm 6.x compatibility matrix, Linux). A target outside this list
# can still run llama.cpp through Vulkan.
ROCM_TARGETS = {
    "gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100", "gfx1101", "gfx1102",
    "gfx1150", "gfx1151", "gfx1200", "gfx1201",
}


def parse_proc_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo (x86 and arm64): model name, flags, logical CPUs, physical cores."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    if not blocks:
        raise ParseError("empty /proc/cpuinfo")
    model, flags, cores = None, [], set()
    logical = 0
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields and fields["processor"].isdigit():
            logical += 1
        model = model or fields.get("model name") or fields.get("Model") or fields.get("Hardware")
        flags = flags or (fields.get("flags") or fields.get("Features") or "").split()
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    if logical == 0:
        raise ParseError("no processor entries")
    return {"model": model, "flags": flags, "logical_cores": logical, "physical_cores": len(cores) or None}

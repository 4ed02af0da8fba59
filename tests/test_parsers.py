"""Every parser against recorded real outputs (tests/fixtures/hw; provenance in its README)."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from supervisor.facts import parsers as P

HW = FIXTURES / "hw"
GIB = 1024**3


def text(name: str) -> str:
    return (HW / name).read_text()


@pytest.mark.parametrize("name,expected", [
    ("nvidia-smi-query-h100.csv", [("NVIDIA H100 80GB HBM3", 81559, "580.159.04", "9.0")]),
    ("nvidia-smi-query-h200.csv", [("NVIDIA H200", 143771, "580.159.03", "9.0")]),
    ("nvidia-smi-query-laptop-4g.csv", [("NVIDIA GeForce RTX 3050 Laptop GPU", 4096, "535.183.01", "8.6")]),
    ("nvidia-smi-query-2gpu-mixed.csv", [("NVIDIA GeForce RTX 4090", 24564, "550.54.14", "8.9"),
                                         ("NVIDIA GeForce RTX 3090", 24576, "550.54.14", "8.6")]),
])
def test_nvidia_query(name, expected):
    gpus = P.parse_nvidia_query(text(name))
    assert [(g["name"], g["vram_bytes"] // 2**20, g["driver"], g["compute_capability"]) for g in gpus] == expected
    assert [g["index"] for g in gpus] == list(range(len(expected)))


def test_nvidia_query_with_header_and_units():
    gpus = P.parse_nvidia_query(text("nvidia-smi-query-with-header-units.csv"))
    assert [(g["name"], g["vram_bytes"] // 2**20) for g in gpus] == [("NVIDIA H200", 143771)] * 2


def test_nvidia_banner_and_failed_driver():
    assert P.parse_nvidia_banner(text("nvidia-smi-banner.txt")) == {"driver": "580.159.04", "cuda_version": "13.0"}
    with pytest.raises(P.ParseError, match="driver not loaded"):
        P.parse_nvidia_banner(text("nvidia-smi-driver-failed.txt"))


def test_rocm_smi_both_key_spellings():
    one = P.parse_rocm_smi(text("rocm-smi-showproductname-meminfo.json"))
    assert [(g["name"], g["vram_bytes"], g["gfx_target"]) for g in one] == [("Radeon RX 7900 XTX", 25753026560, "gfx1100")]
    two = P.parse_rocm_smi(text("rocm-smi-lowercase-series-2cards.json"))
    assert [g["name"] for g in two] == ["AMD Instinct MI300X"] * 2 and two[1]["vram_bytes"] == 206158430208
    with pytest.raises(P.ParseError):
        P.parse_rocm_smi("not json")


def test_amd_smi_static():
    (gpu,) = P.parse_amd_smi_static(text("amd-smi-static.json"))
    assert gpu["name"] == "AMD Radeon RX 7900 XTX" and gpu["gfx_target"] == "gfx1100"
    assert gpu["vram_bytes"] == 24560 * 2**20 and gpu["driver"] == "6.10.5"


def test_kfd_topology():
    node = P.parse_kfd_properties(text("kfd-topology-node1-properties.txt"))
    assert node["gfx_target"] == "gfx1100" and node["vendor_id"] == 4098
    assert P.parse_kfd_properties("cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\n") is None
    assert P.parse_kfd_properties("simd_count 8\ngfx_target_version 90010\n")["gfx_target"] == "gfx90a"


def test_drm_sysfs():
    assert P.parse_int(text("drm-card1-mem_info_vram_total.txt")) == 25753026560
    assert P.parse_int(text("drm-card1-vendor.txt")) == 0x1002


def test_lspci_desktop_and_apu_npu():
    gpus, npus = P.pci_accelerators(P.parse_lspci_nn(text("lspci-nn-desktop.txt")))
    assert [(g["vendor"], g["name"]) for g in gpus] == [("intel", "UHD Graphics 770"), ("nvidia", "GeForce RTX 4090")]
    assert npus == []
    gpus, npus = P.pci_accelerators(P.parse_lspci_nn(text("lspci-nn-amd-apu-npu.txt")))
    assert [(g["vendor"], g["pci_id"]) for g in gpus] == [("amd", "1002:150e")]
    assert [(n["vendor"], n["pci_id"]) for n in npus] == [("amd", "1022:17f0")]


def test_os_release_and_wsl():
    assert P.parse_os_release(text("os-release-ubuntu-2404.txt")) == {
        "id": "ubuntu", "id_like": ["debian"], "version_id": "24.04", "pretty_name": "Ubuntu 24.04.1 LTS"}
    assert P.parse_os_release(text("os-release-fedora-41.txt"))["version_id"] == "41"
    assert P.parse_proc_version(text("proc-version-wsl2.txt")) == {"kernel": "5.15.153.1-microsoft-standard-WSL2", "wsl": 2}
    assert P.parse_proc_version("Linux version 6.8.0-45-generic (buildd@lcy02) #45-Ubuntu SMP")["wsl"] is None


def test_jetson_release():
    assert P.parse_nv_tegra_release(text("nv_tegra_release-jetpack6.txt")) == 6
    assert P.parse_nv_tegra_release(text("nv_tegra_release-jetpack5.txt")) == 5
    assert P.parse_nv_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref") is None
    with pytest.raises(P.ParseError):
        P.parse_nv_tegra_release("Ubuntu 22.04")


def test_apple_sysctl():
    assert P.parse_int(text("sysctl-hw.memsize.txt")) == 64 * GIB
    assert text("sysctl-machdep.cpu.brand_string.txt").strip() == "Apple M2 Max"


def test_proc_cpuinfo_and_flags():
    sample = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma f16c\n"
              "physical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
              "physical id\t: 0\ncore id\t\t: 1\n")
    info = P.parse_proc_cpuinfo(sample)
    assert info["model"] == "AMD EPYC" and info["logical_cores"] == 2 and info["physical_cores"] == 2
    isa = P.parse_cpu_flags(info["flags"])
    assert isa["avx2"] and not isa["avx512"] and not isa["neon"]
    assert P.parse_cpu_flags(["fp", "asimd"])["neon"]


def test_misc_parsers():
    assert P.parse_ldd_version("ldd (Debian GLIBC 2.36-9+deb12u7) 2.36\nCopyright") == "2.36"
    assert P.parse_cgroup("0::/system.slice/docker-abc.scope") == "docker"
    assert P.parse_cgroup("0::/init.scope") is None
    summary = "Devices:\n========\nGPU0:\n\tapiVersion = 1.3.280\n\tdeviceType = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU\n" \
              "\tdeviceName = AMD Radeon RX 7900 XTX (RADV NAVI31)\n\tdriverName = radv\n"
    assert P.parse_vulkaninfo_summary(summary) == [{"name": "AMD Radeon RX 7900 XTX (RADV NAVI31)",
                                                     "type": "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU",
                                                     "driver": "radv", "api_version": "1.3.280"}]

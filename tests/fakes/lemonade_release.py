"""Lemonade's embeddable release, test-built with the real layout around the fake lemond
(lemonade-embeddable-<ver>-ubuntu-x64/{lemond, lemonade, resources/server_models.json}), put
where a loopback https mirror serves GitHub's release download and GitHub's release API (whose
assets[].digest is the sha256 farmhand checks the tarball against)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

FAKE = Path(__file__).with_name("fake_lemond.py")


def release(root: Path, version: str, registry: dict, digest: str | None = None) -> Path:
    folder = f"lemonade-embeddable-{version}-ubuntu-x64"
    lemond = FAKE.read_text().replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1) \
        .replace('VERSION = "11.8.0"', f'VERSION = "{version}"', 1)
    cli = f"#!/bin/sh\nexec {sys.executable} \"$(dirname \"$0\")/lemond\" \"$@\"\n"
    members = {f"{folder}/lemond": (lemond.encode(), 0o755), f"{folder}/lemonade": (cli.encode(), 0o755),
               f"{folder}/resources/server_models.json": (json.dumps(registry).encode(), 0o644)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    downloads = root / "github.com" / "lemonade-sdk" / "lemonade" / "releases" / "download" / f"v{version}"
    downloads.mkdir(parents=True, exist_ok=True)
    tarball = downloads / f"{folder}.tar.gz"
    tarball.write_bytes(buf.getvalue())
    api = root / "api.github.com" / "repos" / "lemonade-sdk" / "lemonade" / "releases" / "tags"
    api.mkdir(parents=True, exist_ok=True)
    sha = digest or hashlib.sha256(tarball.read_bytes()).hexdigest()
    (api / f"v{version}").write_text(json.dumps({"tag_name": f"v{version}", "assets": [
        {"name": tarball.name, "size": tarball.stat().st_size, "digest": f"sha256:{sha}"},
        {"name": f"lemonade-embeddable-{version}-windows-x64.zip", "digest": "sha256:" + "0" * 64}]}))
    return tarball

"""Bad bundles and bundle arguments: one line, the right exit code, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


def run(*argv: str, home) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                          env=os.environ | {"FARMHAND_HOME": str(home)})


@pytest.mark.parametrize("make, code, says", [
    (lambda d: d / "missing.tar", 2, "no such bundle"),
    (lambda d: (d / "text.tar").write_text("not a tar") and d / "text.tar", 2, "not a farmhand bundle"),
    (lambda d: d, 2, "is a directory"),
], ids=["missing", "not-a-tar", "a-directory"])
def test_apply_refuses_what_is_not_a_bundle(tmp_path, make, code, says):
    target = make(tmp_path)
    proc = run(sys.executable, "-m", "supervisor", "apply", "--yes", "--bundle", str(target), home=tmp_path / "home")
    assert proc.returncode == code and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "data").exists()


def test_bootstrap_refuses_a_missing_bundle_before_making_a_venv(tmp_path):
    proc = run(sys.executable, str(REPO / "bootstrap.py"), "--bundle", str(tmp_path / "none.tar"), home=tmp_path / "h")
    assert proc.returncode == 2 and "cannot open the bundle" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bundle_create_into_a_missing_directory_is_one_line(tmp_path):
    proc = run(sys.executable, "-m", "supervisor", "bundle", "create", str(tmp_path / "no" / "b.tar"),
               home=tmp_path / "home")
    assert proc.returncode == 2 and "no directory" in proc.stderr, proc.stderr


def test_members_read_at_once_from_threads_stay_whole(tmp_path):
    """Installs and model copies read one bundle on several threads: each reader has its own file
    position (tarfile's readers share one, and interleaved reads mixed bytes of two members)."""
    import hashlib
    import io
    import json
    import tarfile
    from concurrent.futures import ThreadPoolExecutor

    from supervisor.bundle import Bundle

    blobs = {f"farmhand-bundle/models/{i}": os.urandom(3 << 20) for i in range(4)}
    manifest = {"format": 1, "built_for": {"arch": "x86_64", "cpu_level": "none", "cpu_flags": [], "variants": [],
                                           "python": "3.11", "farmhand": "0"},
                "profile": "p", "overrides": None, "installs": {}, "models": {},
                "members": {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}}
    path = tmp_path / "b.tar"
    with tarfile.open(path, "w:") as tar:
        for name, data in [*blobs.items(), ("farmhand-bundle/manifest.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bundle = Bundle(path)

    def digest(name: str) -> str:
        h = hashlib.sha256()
        with bundle.open_member(name) as fh:
            for block in iter(lambda: fh.read(1 << 16), b""):
                h.update(block)
        return h.hexdigest()

    names = list(blobs) * 8
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(digest, names))
    assert got == [manifest["members"][n] for n in names]

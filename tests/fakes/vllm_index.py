"""A loopback Python package index holding a fake `vllm` wheel (fake_vllm.py as its module,
`vllm` as its console script), laid out as a PEP 503 simple index (<root>/simple/vllm/), so
farmhand's pip install of vLLM runs for real: the venv, the index options, the version pin."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

FAKE = Path(__file__).with_name("fake_vllm.py")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(directory: Path, version: str) -> Path:
    dist = f"vllm-{version}.dist-info"
    files = {
        "vllm/__init__.py": f'__version__ = "{version}"\n'.encode(),
        "vllm/_fake.py": FAKE.read_bytes(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: fake vLLM for tests\n"
                            .encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: farmhand-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\nvllm = vllm._fake:main\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"vllm-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def package_index(root: Path, versions: tuple[str, ...]) -> Path:
    """<root>/simple/vllm/ with one wheel per version; returns <root>/simple."""
    project = root / "simple" / "vllm"
    project.mkdir(parents=True, exist_ok=True)
    for v in versions:
        build_wheel(project, v)
    return root / "simple"

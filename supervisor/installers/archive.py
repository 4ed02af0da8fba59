"""`archive`: a release archive (URL and pinned sha256) unpacked into a versioned directory.

The archive is downloaded into farmhand's cache (resumed after a cut), its sha256 checked
before a byte is unpacked, then extracted safely (extract.py) into `<key>.partial` and renamed
to the install's directory only when complete. The directory name carries the install's key,
so a new version installs beside the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInput, FarmhandError, VerificationFailed
from ..ledger import ensure_dir
from ..paths import Paths
from . import Installer, InstallSpec, staged


class ArchiveInstaller(Installer):
    method = "archive"

    def describe(self, spec: InstallSpec) -> str:
        return f"download and unpack {spec.get('url')}"

    def problem(self, spec: InstallSpec, tools: dict | None) -> str | None:
        missing = [k for k in ("url", "sha256", "binary") if not spec.get(k)]
        if missing:
            return f"{spec.backend}: install method `archive` needs {', '.join(missing)} in its install settings"
        return None

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        return self.prefix(spec, paths) / spec.get("binary")

    def install(self, spec: InstallSpec, paths: Paths, ledger, report) -> Path:
        from .. import extract
        from ..sources import SourceFailed
        from ..sources.http import download
        from ..store import sha256_file

        problem = self.problem(spec, None)
        if problem:
            raise BadInput(problem)
        step = f"install:{spec.key}"
        url, expected = spec.get("url"), spec.get("sha256")
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "archive"
        ensure_dir(paths.downloads, ledger, step)
        archive = paths.downloads / f"{expected[:16]}-{name}"
        partial = archive.with_name(archive.name + ".partial")
        prefix = self.prefix(spec, paths)
        ledger.add_resource("file", partial, step)
        if not archive.exists():
            try:
                download(url, partial, size_hint=0, label=name, report=report)
            except SourceFailed as exc:
                raise FarmhandError(f"{spec.backend}: downloading {url} failed: {exc} (a re-run resumes)") from None
            digest = sha256_file(partial)
            if digest != expected:
                partial.unlink(missing_ok=True)
                raise VerificationFailed(f"{name}: sha256 mismatch: expected {expected}, got {digest}; "
                                         f"partial file {partial} removed")
            ledger.add_resource("file", archive, step)
            os.replace(partial, archive)
            ledger.forget_resource(partial)
        elif sha256_file(archive) != expected:
            archive.unlink()
            raise VerificationFailed(f"{name}: the cached archive no longer matches sha256 {expected}; removed it, "
                                     "re-run to download again")
        ensure_dir(prefix.parent, ledger, step)
        with staged(prefix, ledger, step) as staging:
            extract.extract(archive, staging)
            binary = staging / spec.get("binary")
            if not binary.is_file():
                found = sorted(str(p.relative_to(staging)) for p in staging.rglob(Path(spec.get("binary")).name))
                raise FarmhandError(f"{name}: no {spec.get('binary')} in the archive"
                                    + (f" (found {', '.join(found)}; set install.binary)" if found else ""))
        return self.binary(spec, paths)

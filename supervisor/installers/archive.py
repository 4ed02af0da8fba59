"""`archive`: a release archive (URL and pinned sha256) unpacked into a versioned directory.

The archive is downloaded into farmhand's cache (resumed after a cut), its sha256 checked
before a byte is unpacked, then extracted safely (extract.py) into `<key>.partial` and renamed
to the install's directory only when complete. The directory name carries the install's key,
so a new version installs beside the old one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput, FarmhandError
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
        from ..sources import check_uri

        try:
            check_uri(spec.get("url"), True, f"{spec.backend}: install.url")
        except BadInput as exc:
            return str(exc)
        return None

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        return self.prefix(spec, paths) / spec.get("binary")

    def install(self, spec: InstallSpec, paths: Paths, ledger, report) -> Path:
        from .. import extract
        from ..fetcher import Expect, FetchFailed, download, sha256_file

        problem = self.problem(spec, None)
        if problem:
            raise BadInput(problem)
        step = f"install:{spec.key}"
        url, expected = spec.get("url"), spec.get("sha256")
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "archive"
        ensure_dir(paths.downloads, ledger, step)
        archive = paths.downloads / f"{expected[:16]}-{name}"
        ledger.add_resource("file", archive.with_name(archive.name + ".partial"), step)
        ledger.add_resource("file", archive, step)
        if archive.exists() and sha256_file(archive) != expected:
            archive.unlink()  # damaged since it was kept: fetch it again
        try:  # the digest is checked before a byte is unpacked
            download(url, archive, Expect(sha256=expected), label=name, report=report)
        except FetchFailed as exc:
            raise FarmhandError(f"{spec.backend}: downloading {url} failed: {exc}") from None
        prefix = self.prefix(spec, paths)
        ensure_dir(prefix.parent, ledger, step)
        with staged(prefix, ledger, step) as staging:
            extract.extract(archive, staging)
            binary = staging / spec.get("binary")
            if not binary.is_file():
                found = sorted(str(p.relative_to(staging)) for p in staging.rglob(Path(spec.get("binary")).name))
                raise FarmhandError(f"{name}: no {spec.get('binary')} in the archive"
                                    + (f" (found {', '.join(found)}; set install.binary)" if found else ""))
        return self.binary(spec, paths)

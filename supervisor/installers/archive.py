"""`archive`: release archives (URL and sha256) unpacked into a versioned directory.

An install is one archive or several unpacked over each other in order (Ollama's base archive,
then its `-rocm` or `-jetpack6` add-on). Each archive's sha256 is pinned in the install
settings or read from the release's checksum file (`sha256sums`, fetched first: a name it does
not list is refused); a release without one (Lemonade) names GitHub's release API instead,
whose `assets[].digest` is the sha256 GitHub computed at upload. Each archive is downloaded into farmhand's cache (resumed after a cut)
and its digest checked before a byte is unpacked; all are extracted safely (extract.py) into
`<key>.partial`, which is renamed to the install's directory only when complete, and the
downloads are then deleted. The directory name carries the install's key, so a new version
installs beside the old one (steps.PruneStep removes the old one once the new one is ready).
URLs go through the https mirror when one is configured (sources.Mirrors).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import extract, stepids
from ..errors import BadInput, FarmhandError, VerificationFailed
from ..fetcher import Expect, FetchFailed, copy_from, download, sha256_file
from ..fsio import ensure_dir
from ..paths import Paths
from ..refs import is_sha256
from ..sources import check_uri, get
from .base import Installer, InstallSpec, staged

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from ..bundle import Bundle


@dataclass(frozen=True)
class Archive:
    """One release archive: where it is, and its sha256 when pinned."""

    url: str
    sha256: str | None  # None: looked up in the release's checksum file

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "archive"


def archives_of(spec: InstallSpec) -> list[Archive]:
    """The archives of an install, in unpacking order (`archives:` or the single `url`/`sha256`)."""
    listed = spec.get("archives")
    if listed:
        return [Archive(a.get("url", ""), a.get("sha256")) for a in listed if isinstance(a, dict)]
    return [Archive(spec.get("url"), spec.get("sha256"))] if spec.get("url") else []


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <name>", "<hex> *<name>" for binary mode) -> {basename: hex}.
    Names are reduced to their last path component (releases list `./dist/NAME`)."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or not is_sha256(parts[0].lower()):
            continue
        name = parts[1].strip().lstrip("*").rsplit("/", 1)[-1]
        sums[name] = parts[0].lower()
    return sums


def parse_release_digests(text: str) -> dict[str, str]:
    """GitHub's release API answer (`assets[].name`, `assets[].digest` = "sha256:<hex>") ->
    {name: hex}: the digest GitHub computed when the asset was uploaded, for releases that
    publish no checksum file."""
    import json

    try:
        assets = json.loads(text).get("assets") or []
    except (ValueError, AttributeError):
        return {}
    out = {}
    for asset in assets:
        digest = str(asset.get("digest") or "")
        if digest.startswith("sha256:") and is_sha256(digest[7:].lower()):
            out[str(asset.get("name"))] = digest[7:].lower()
    return out


def mirrored(url: str) -> str:

    return get(url).url(url) if url.startswith("https://") else url


class ArchiveInstaller(Installer):
    method = "archive"

    def describe(self, spec: InstallSpec) -> str:
        names = [a.name for a in archives_of(spec)]
        where = mirrored(archives_of(spec)[0].url).rsplit("/", 1)[0] if names else "?"
        return f"download and unpack {' + '.join(names)} from {where}"

    def problem(self, spec: InstallSpec, tools: dict | None) -> str | None:

        archives = archives_of(spec)
        missing = [k for k, ok in (("url (or archives)", archives), ("binary", spec.get("binary"))) if not ok]
        if missing:
            return f"{spec.backend}: install method `archive` needs {', '.join(missing)} in its install settings"
        sums = spec.get("sha256sums")
        try:
            for archive in archives:
                if not archive.url:
                    return f"{spec.backend}: an entry of install.archives has no url"
                if archive.sha256 is not None and not is_sha256(str(archive.sha256)):
                    return f"{spec.backend}: install sha256 for {archive.name} is not 64 hex digits"
                check_uri(archive.url, bool(archive.sha256 or sums), f"{spec.backend}: install url")
            if sums:
                check_uri(sums, True, f"{spec.backend}: install.sha256sums")
        except BadInput as exc:
            return str(exc)
        return None

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        return self.prefix(spec, paths) / spec.get("binary")

    def install(self, spec: InstallSpec, paths: Paths, ledger, report, offline: Bundle | None = None) -> Path:
        problem = self.problem(spec, None)
        if problem:
            raise BadInput(problem)
        step = stepids.install(spec.key)
        prefix = self.prefix(spec, paths)
        try:
            return self._install(spec, paths, ledger, report, step, prefix, offline)
        except BaseException:
            for directory in (prefix.parent, paths.downloads):  # made for this install, and empty: gone too
                try:
                    directory.rmdir()
                    ledger.forget_resource(directory)
                except OSError:
                    pass
            raise

    def fetch_archives(self, spec: InstallSpec, paths: Paths, ledger, report, step: str,
                       offline: Bundle | None = None) -> list[tuple[Archive, Path]]:
        """Each archive of `spec` in farmhand's downloads, its digest checked (for installing, and
        for `bundle create` to carry); from `offline`, the bundle being installed, when there is one."""
        ensure_dir(paths.downloads, ledger, step)
        archives = self._with_digests(spec, paths, ledger, report, step, offline)
        return [(a, self._download(a, paths, ledger, report, step, spec.backend, offline)) for a in archives]

    def _install(self, spec: InstallSpec, paths: Paths, ledger, report, step: str, prefix: Path,
                 offline: Bundle | None) -> Path:

        fetched = self.fetch_archives(spec, paths, ledger, report, step, offline)
        archives, files = [a for a, _ in fetched], [f for _, f in fetched]
        ensure_dir(prefix.parent, ledger, step)
        try:
            with staged(prefix, ledger, step) as staging:
                extract.extract(files[0], staging, archives[0].name)
                for number, (archive, file) in enumerate(zip(archives[1:], files[1:]), 1):
                    # Add-ons unpack over the base archive, as the vendor's installer does.
                    addon = prefix.with_name(f"{prefix.name}.addon{number}.partial")
                    ledger.add_resource("dir", addon, step)
                    try:
                        extract.extract(file, addon, archive.name)
                        _merge(addon, staging)
                    finally:
                        shutil.rmtree(addon, ignore_errors=True)
                        ledger.forget_resource(addon)
                binary = staging / spec.get("binary")
                if not binary.is_file():
                    found = sorted(str(p.relative_to(staging)) for p in staging.rglob(Path(spec.get("binary")).name))
                    raise VerificationFailed(f"{archives[0].name}: no {spec.get('binary')} in the archive"
                                             + (f" (found {', '.join(found)}; set install.binary)" if found else ""))
        except VerificationFailed:  # what was published is unusable: a retry must fetch it again
            _forget(files, ledger)
            raise
        _forget(files, ledger)  # unpacked and verified: the downloads have done their job
        return self.binary(spec, paths)

    def _with_digests(self, spec, paths, ledger, report, step, offline: Bundle | None) -> list[Archive]:

        archives = archives_of(spec)
        if all(a.sha256 for a in archives):
            return archives
        if offline is not None:  # the digests the bundle was made with: no checksum file to fetch
            if not offline.holds_install(spec.key):
                raise offline.missing_build(spec.key, spec.backend, spec.variant)
            digests = offline.manifest.installs[spec.key].get("archives", {})
            return [Archive(a.url, a.sha256 or digests.get(a.name)) for a in archives]

        url = spec.get("sha256sums")
        sums_file = paths.downloads / f"{spec.key}-sha256sums.txt"
        ledger.add_resource("file", sums_file.with_name(sums_file.name + ".partial"), step)
        ledger.add_resource("file", sums_file, step)
        sums_file.unlink(missing_ok=True)  # always the release's current list
        try:
            download(mirrored(url), sums_file, Expect(), label="sha256sums", report=report)
        except FetchFailed as exc:
            raise FarmhandError(f"{spec.backend}: fetching the release checksums {mirrored(url)} failed: {exc}") from None
        text = sums_file.read_text(errors="replace")
        sums = parse_release_digests(text) if text.lstrip().startswith("{") else parse_sha256sums(text)
        sums_file.unlink(missing_ok=True)
        ledger.forget_resource(sums_file)
        out = []
        for archive in archives:
            digest = archive.sha256 or sums.get(archive.name)
            if not digest:
                raise VerificationFailed(f"{spec.backend}: {url} lists no sha256 for {archive.name} "
                                         f"(it lists {', '.join(sorted(sums)) or 'nothing'}); refusing an unverified download")
            out.append(Archive(archive.url, digest))
        return out

    def _download(self, archive: Archive, paths, ledger, report, step, backend: str, offline: Bundle | None) -> Path:

        file = paths.downloads / f"{archive.sha256[:16]}-{archive.name}"
        ledger.add_resource("file", file.with_name(file.name + ".partial"), step)
        ledger.add_resource("file", file, step)
        if file.exists() and sha256_file(file) != archive.sha256:
            file.unlink()  # damaged since it was kept: fetch it again

        member = offline.archive_member(archive.sha256) if offline else None
        if member:
            copy_from(lambda: offline.open_member(member), offline.member_size(member), f"bundle:{offline.path.name}",
                      file, Expect(sha256=archive.sha256), label=archive.name, report=report)
            return file
        url = mirrored(archive.url)
        try:  # the digest is checked before a byte is unpacked
            download(url, file, Expect(sha256=archive.sha256), label=archive.name, report=report)
        except FetchFailed as exc:
            raise FarmhandError(f"{backend}: downloading {url} failed: {exc}") from None
        return file


def _forget(files: list[Path], ledger) -> None:
    for file in files:
        file.unlink(missing_ok=True)
        ledger.forget_resource(file)


def _merge(source: Path, dest: Path) -> None:
    """Move every entry of `source` into `dest` (directories merged, files replaced), then
    remove `source`. Both were extracted by extract.py, so neither holds a link leading out."""
    import os

    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    source.rmdir()

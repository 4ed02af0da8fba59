"""Safe extraction of release archives (.tar.gz/.tgz/.tar.xz/.tar.bz2/.tar.zst/.tar/.zip).

Every member is checked before anything is written: no absolute path, no `..`, no symlink
whose target leaves the destination, no hard link to anything but an earlier regular member,
no device files or FIFOs. Modes keep their permission bits without set-uid/set-gid. The
caller extracts into a staging directory and renames it into place only when this returns.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from .errors import VerificationFailed


class UnsafeArchive(VerificationFailed):
    """An archive member that would write outside the destination, or a kind farmhand refuses."""


def _safe_name(name: str, archive: str) -> str:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith("/") or norm.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; refused, nothing extracted")
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise UnsafeArchive(f"{archive}: member {name!r} points outside the archive (..); refused, nothing extracted")
    return norm


def _inside(base: str, target: str) -> bool:
    return target == base or target.startswith(base.rstrip("/") + "/")


def _check_link(member: str, target: str, archive: str) -> None:
    if target.startswith("/"):
        raise UnsafeArchive(f"{archive}: link {member!r} -> {target!r} is absolute; refused, nothing extracted")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{archive}: link {member!r} -> {target!r} points outside; refused, nothing extracted")


def _open_tar(path: Path) -> tarfile.TarFile:
    if path.name.endswith((".tar.zst", ".tzst")):
        try:
            import zstandard
        except ImportError:
            from .errors import EnvironmentProblem

            raise EnvironmentProblem("extracting .tar.zst needs the zstandard package "
                                     "(pip install zstandard in farmhand's venv)") from None
        with open(path, "rb") as fh:
            data = zstandard.ZstdDecompressor().stream_reader(fh).read()
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    return tarfile.open(path, mode="r:*")


def extract(archive: Path, dest: Path) -> list[str]:
    """Extract `archive` into the (new, empty) directory `dest`; the member names, in order."""
    archive = Path(archive)
    dest.mkdir(parents=True, exist_ok=False)
    if archive.name.endswith(".zip"):
        return _extract_zip(archive, dest)
    try:
        tar = _open_tar(archive)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VerificationFailed(f"{archive.name}: not a readable archive ({exc})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise VerificationFailed(f"{archive.name}: truncated or corrupt archive ({exc})") from None
        seen: set[str] = set()
        for m in members:
            name = _safe_name(m.name, archive.name)
            if m.issym():
                _check_link(name, m.linkname, archive.name)
            elif m.islnk():
                target = _safe_name(m.linkname, archive.name)
                if target not in seen:
                    raise UnsafeArchive(f"{archive.name}: hard link {m.name!r} -> {m.linkname!r} does not name an "
                                        "earlier file of the archive; refused, nothing extracted")
            elif m.ischr() or m.isblk() or m.isfifo() or m.isdev():
                raise UnsafeArchive(f"{archive.name}: member {m.name!r} is a device or FIFO; refused, nothing extracted")
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchive(f"{archive.name}: member {m.name!r} has an unknown type; refused")
            seen.add(name)
        base = os.path.realpath(dest)
        for m in members:
            name = posixpath.normpath(m.name)
            out = os.path.join(base, name)
            # A symlink extracted earlier must not redirect a later member outside.
            if not _inside(base, os.path.realpath(os.path.dirname(out))):
                raise UnsafeArchive(f"{archive.name}: member {m.name!r} would be written through a link; refused")
            if m.isdir():
                os.makedirs(out, exist_ok=True)
                os.chmod(out, 0o755)
            elif m.issym():
                os.makedirs(os.path.dirname(out), exist_ok=True)
                os.symlink(m.linkname, out)
            elif m.islnk():
                os.makedirs(os.path.dirname(out), exist_ok=True)
                os.link(os.path.join(base, posixpath.normpath(m.linkname)), out)
            else:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                src = tar.extractfile(m)
                try:
                    with open(out, "wb") as fh:
                        while block := src.read(1 << 20):
                            fh.write(block)
                except (tarfile.TarError, EOFError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise
                    raise VerificationFailed(f"{archive.name}: truncated archive at {m.name!r}") from None
                os.chmod(out, m.mode & 0o777 & ~(stat.S_ISUID | stat.S_ISGID))
        return [m.name for m in members]


def _extract_zip(archive: Path, dest: Path) -> list[str]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerificationFailed(f"{archive.name}: not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        links = {}
        for info in infos:
            name = _safe_name(info.filename, archive.name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", errors="replace")
                _check_link(name, target, archive.name)
                links[info.filename] = target
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: written without a type
                raise UnsafeArchive(f"{archive.name}: member {info.filename!r} is not a file or directory; refused")
        base = os.path.realpath(dest)
        for info in infos:
            name = posixpath.normpath(info.filename)
            out = os.path.join(base, name)
            if not _inside(base, os.path.realpath(os.path.dirname(out))):
                raise UnsafeArchive(f"{archive.name}: member {info.filename!r} would be written through a link")
            if info.filename in links:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                os.symlink(links[info.filename], out)
            elif info.is_dir():
                os.makedirs(out, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                try:
                    with zf.open(info) as src, open(out, "wb") as fh:
                        while block := src.read(1 << 20):
                            fh.write(block)
                except (zipfile.BadZipFile, EOFError) as exc:
                    raise VerificationFailed(f"{archive.name}: corrupt member {info.filename!r} ({exc})") from None
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(out, mode or 0o644)
        return [i.filename for i in infos]

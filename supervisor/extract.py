"""Safe extraction of release archives (.tar.gz/.tgz/.tar.xz/.tar.bz2/.tar.zst/.tar/.zip).

Every member is checked before it is written: no absolute path, no `..`, no symlink whose
target leaves the destination, no hard link to anything but an earlier regular member, no
device files or FIFOs, nothing written through a link an earlier member made. Modes keep their
permission bits without set-uid/set-gid. Tar archives are read as a stream in one pass (a
4 GB Ollama archive needs no 4 GB of memory and no second copy on disk); .tar.zst through the
zstandard library, so the host needs no `zstd`. The caller extracts into a staging directory
that is removed when this raises and renamed into place only when it returns, so a refused
archive leaves nothing.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from .errors import EnvironmentProblem, VerificationFailed


class UnsafeArchive(VerificationFailed):
    """An archive member that would write outside the destination, or a kind farmhand refuses."""


REFUSED = "refused, nothing installed"


def _safe_name(name: str, archive: str) -> str:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith("/") or norm.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path; {REFUSED}")
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise UnsafeArchive(f"{archive}: member {name!r} points outside the archive (..); {REFUSED}")
    return norm


def _inside(base: str, target: str) -> bool:
    return target == base or target.startswith(base.rstrip("/") + "/")


def _check_link(member: str, target: str, archive: str) -> None:
    if target.startswith("/"):
        raise UnsafeArchive(f"{archive}: link {member!r} -> {target!r} is absolute; {REFUSED}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{archive}: link {member!r} -> {target!r} points outside; {REFUSED}")


def _open_tar(path: Path, name: str):
    """(TarFile, the file objects to close) reading `path` as a stream."""
    if name.endswith((".tar.zst", ".tzst")):
        try:
            import zstandard
        except ImportError:

            raise EnvironmentProblem("extracting .tar.zst needs the zstandard package "
                                     "(pip install zstandard in farmhand's venv)") from None
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller with the reader
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        return tarfile.open(fileobj=reader, mode="r|"), (reader, raw)
    return tarfile.open(path, mode="r|*"), ()


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def extract(archive: Path, dest: Path, label: str | None = None) -> list[str]:
    """Extract `archive` into the (new, empty) directory `dest`; the member names, in order.
    Messages name the archive `label` (its published name; default: the file's)."""
    archive = Path(archive)
    name = label or archive.name
    dest.mkdir(parents=True, exist_ok=False)
    if name.endswith(".zip"):
        return _extract_zip(archive, dest, name)
    broken = _stream_errors()
    try:
        tar, handles = _open_tar(archive, name)
    except broken + (OSError,) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise VerificationFailed(f"{name}: truncated or corrupt archive ({exc}); {REFUSED}") from None
    base = os.path.realpath(dest)
    names: list[str] = []
    seen: set[str] = set()
    try:
        for m in tar:
            member = _check(m, seen, name)
            out = os.path.join(base, member)
            # A symlink extracted earlier must not redirect this member outside.
            if not _inside(base, os.path.realpath(os.path.dirname(out))):
                raise UnsafeArchive(f"{name}: member {m.name!r} would be written through a link; {REFUSED}")
            _write(tar, m, base, out)
            seen.add(member)
            names.append(m.name)
    except broken as exc:
        raise VerificationFailed(f"{name}: truncated or corrupt archive ({exc}); {REFUSED}") from None
    finally:
        tar.close()
        for handle in handles:
            handle.close()
    return names


def _check(m: tarfile.TarInfo, seen: set[str], archive: str) -> str:
    name = _safe_name(m.name, archive)
    if m.issym():
        _check_link(name, m.linkname, archive)
    elif m.islnk():
        target = _safe_name(m.linkname, archive)
        if target not in seen:
            raise UnsafeArchive(f"{archive}: hard link {m.name!r} -> {m.linkname!r} does not name an earlier file "
                                f"of the archive; {REFUSED}")
    elif m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        raise UnsafeArchive(f"{archive}: member {m.name!r} is a device or FIFO; {REFUSED}")
    elif not (m.isfile() or m.isdir()):
        raise UnsafeArchive(f"{archive}: member {m.name!r} has an unknown type; {REFUSED}")
    return name


def _write(tar: tarfile.TarFile, m: tarfile.TarInfo, base: str, out: str) -> None:
    if m.isdir():
        os.makedirs(out, exist_ok=True)
        os.chmod(out, 0o755)
        return
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if m.issym():
        os.symlink(m.linkname, out)
    elif m.islnk():
        os.link(os.path.join(base, posixpath.normpath(m.linkname)), out)
    else:
        src = tar.extractfile(m)
        with open(out, "wb") as fh:
            while block := src.read(1 << 20):
                fh.write(block)
        os.chmod(out, m.mode & 0o777 & ~(stat.S_ISUID | stat.S_ISGID))


def _extract_zip(archive: Path, dest: Path, label: str) -> list[str]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerificationFailed(f"{label}: not a readable zip ({exc})") from None
    with zf:
        infos = zf.infolist()
        links = {}
        for info in infos:
            name = _safe_name(info.filename, label)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", errors="replace")
                _check_link(name, target, label)
                links[info.filename] = target
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: written without a type
                raise UnsafeArchive(f"{label}: member {info.filename!r} is not a file or directory; refused")
        base = os.path.realpath(dest)
        for info in infos:
            name = posixpath.normpath(info.filename)
            out = os.path.join(base, name)
            if not _inside(base, os.path.realpath(os.path.dirname(out))):
                raise UnsafeArchive(f"{label}: member {info.filename!r} would be written through a link")
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
                    raise VerificationFailed(f"{label}: corrupt member {info.filename!r} ({exc})") from None
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(out, mode or 0o644)
        return [i.filename for i in infos]

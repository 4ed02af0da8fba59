"""Files in a project directory: the one place farmhand writes outside its own directories.

A project directory is the user's, and on a shared host another local user may be able to put
names in it. So every file farmhand makes there is created with O_CREAT|O_EXCL|O_NOFOLLOW
relative to a descriptor of the directory (a planted link is never followed, a planted name is
never reused), renames stay inside that descriptor, and farmhand refuses a directory that
anyone but the caller (and root) can write, unless it is sticky and the caller's own. The
backup of the old file and the rewrite are one transaction: if either fails, the config is as
it was and no backup of this run is left.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import time
from pathlib import Path

from .errors import EnvironmentProblem

BACKUP_INFIX = ".farmhand-backup-"
BACKUPS_KEPT = 5
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _private_group(gid: int, owner: int) -> bool:
    """gid is the owner's own group (a user private group) with nobody else in it."""
    try:
        user, group = pwd.getpwuid(owner), grp.getgrgid(gid)
    except KeyError:
        return False
    return user.pw_gid == gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def others_can_write(st: os.stat_result) -> str | None:
    """Why users other than the caller (and root) can put names in this directory, or None."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):  # an owner can always write their own directory; root is trusted
        return f"it belongs to uid {st.st_uid}"
    if st.st_mode & stat.S_ISVTX and st.st_uid == me:
        return None  # others may add names, never replace the caller's: O_EXCL takes care of theirs
    if st.st_mode & stat.S_IWOTH:
        return "it is writable by every user"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, st.st_uid):
        return f"it is writable by group {st.st_gid}"
    return None


def check_dir(directory: Path, st: os.stat_result | None = None) -> None:
    """Refuse a project directory other users can write (EnvironmentProblem, one line)."""
    reason = others_can_write(st or os.stat(directory))
    if reason:
        raise EnvironmentProblem(
            f"{directory}: other users can write this project directory ({reason}), so files farmhand writes there "
            f"could be redirected; use a directory only you can write (chmod go-w {directory}, or choose another "
            "--project-dir); nothing was changed")


def check_file(path: Path) -> None:
    """The config farmhand will rewrite is a regular file of the caller's, not a link or a stranger's."""
    check_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise EnvironmentProblem(f"{path} is a symbolic link; farmhand rewrites only a regular file there (replace "
                                 "the link with the file it points to); nothing was changed")
    if not stat.S_ISREG(st.st_mode):
        raise EnvironmentProblem(f"{path} is not a regular file; move it away and re-run; nothing was changed")
    if st.st_uid != os.geteuid():
        raise EnvironmentProblem(f"{path} belongs to uid {st.st_uid}, not to you; farmhand will not rewrite another "
                                 "user's file; nothing was changed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _create(name: str, dfd: int, data: bytes, mode: int) -> None:
    fd = os.open(name, _CREATE, 0o600, dir_fd=dfd)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dfd)
        raise
    os.close(fd)


def _read_existing(name: str, dfd: int, path: Path) -> tuple[bytes, int] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_file(path)  # raises the one-line refusal for a link
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            check_file(path)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), stat.S_IMODE(st.st_mode)
    finally:
        os.close(fd)


def write_config(path: Path, text: str, *, backup: bool, mode: int = 0o644) -> Path | None:
    """Replace `path` with `text` (a new file gets `mode`, an old one keeps its mode); with
    `backup`, the old content is kept first as `NAME.farmhand-backup-STAMP` beside it. Returns
    the backup's path, if one was made. Old backups beyond BACKUPS_KEPT are pruned afterwards
    (best effort: the new config is already in place)."""
    path = Path(path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_dir(path.parent, os.fstat(dfd))  # the directory opened is the one checked
        existing = _read_existing(path.name, dfd, path)
        made_backup = None
        if backup and existing is not None:
            made_backup = _new_backup(path.name, dfd, *existing)
        tmp = f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            _create(tmp, dfd, text.encode(), existing[1] if existing else mode)
            try:
                os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)
        except BaseException:
            if made_backup is not None:
                os.unlink(made_backup, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
    if made_backup is not None:
        prune_backups(path)
    return path.with_name(made_backup) if made_backup else None


def _new_backup(name: str, dfd: int, data: bytes, mode: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        candidate = f"{name}{BACKUP_INFIX}{stamp}" + (f"-{n}" if n else "")
        try:
            _create(candidate, dfd, data, mode)
            return candidate
        except FileExistsError:
            continue  # two writes within one second, or a planted name: never reused
    raise EnvironmentProblem(f"cannot find a free backup name for {name} (1000 taken); nothing was changed")


def backups(path: Path) -> list[Path]:
    """farmhand's backups of `path`, oldest first: regular files of the caller's (a link or
    another user's file with that name is not farmhand's)."""
    found = []
    me = os.geteuid()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(path.name + BACKUP_INFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == me:
            found.append((st.st_mtime_ns, entry.name))
    return [path.with_name(name) for _, name in sorted(found)]


def prune_backups(path: Path, keep: int = BACKUPS_KEPT) -> None:
    for old in backups(path)[:-keep] if keep else backups(path):
        try:
            os.unlink(old)
        except OSError:
            pass


def remove_temporaries(path: Path) -> list[Path]:
    """Half-written temp files of `path` an interrupted write left (farmhand's only)."""
    removed = []
    me = os.geteuid()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(f".{path.name}.") and entry.name.endswith(".tmp")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == me:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed

"""POSIX shared memory a runtime leaves behind. vLLM's processes talk through segments in
/dev/shm (Python's multiprocessing.shared_memory, `psm_*`); a process killed with SIGKILL never
unlinks its own, and they outlive it in RAM. The supervisor notes the segments a runtime's
processes map while they run, and once they are gone removes those that no live process maps
or holds open any more: never a segment it did not see the runtime use, never one in use.
"""

from __future__ import annotations

import os
from pathlib import Path

SHM = Path("/dev/shm")
_PREFIX = str(SHM) + "/"


def _names_in(pid: int) -> set[str]:
    names: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps", errors="replace") as maps:
            for line in maps:
                at = line.find(_PREFIX)
                if at != -1:
                    names.add(line[at + len(_PREFIX):].strip().removesuffix(" (deleted)"))
    except OSError:
        pass
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith(_PREFIX):
                names.add(target[len(_PREFIX):].removesuffix(" (deleted)"))
    except OSError:
        pass
    return {n for n in names if n and "/" not in n}


def used_by(pids: list[int]) -> set[str]:
    """The /dev/shm segments these processes map or hold open now."""
    out: set[str] = set()
    for pid in pids:
        out |= _names_in(pid)
    return out


def release(names: set[str]) -> list[str]:
    """Remove the segments of `names` that are still there, this user's, and used by no live
    process; returns those removed."""
    if not names or not SHM.is_dir():
        return []
    live = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            live |= _names_in(int(entry.name))
    removed = []
    for name in sorted(names - live):
        path = SHM / name
        try:
            if path.lstat().st_uid != os.geteuid():
                continue
            path.unlink()
            removed.append(name)
        except OSError:
            continue
    return removed

"""The one seam through which probes read the host, so a host can be recorded and replayed.

Probes never call subprocess, open() or psutil themselves: they ask a Host to run a command,
read a file, list a directory or compute a named value. LiveHost does it for real,
RecordingHost does it for real and saves what it saw, ReplayHost answers from a recording.
The recording layout is documented in docs/recordings.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput

INDEX = "host.json"


@dataclass(frozen=True)
class CommandResult:
    """What one probe command returned (or why it did not run), as recorded for replay."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    error: str | None = None  # "not installed", "timed out after 2.0s", ... (None when it ran)

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    def why_not(self) -> str:
        """A short reason this result is unusable, for facts that record why they are missing."""
        if self.error:
            return f"{self.argv[0]}: {self.error}"
        first = (self.stderr or self.stdout).strip().splitlines()[:1]
        return f"{self.argv[0]}: exit {self.returncode}" + (f" ({first[0][:120]})" if first else "")


class Host:
    """What probes may ask of a host. Subclasses decide where the answers come from."""

    def run(self, argv: list[str], timeout: float = 2.0) -> CommandResult:
        raise NotImplementedError

    def read(self, path: str) -> str | None:
        """A file's text, or None when it does not exist or cannot be read."""
        raise NotImplementedError

    def listdir(self, path: str) -> list[str] | None:
        raise NotImplementedError

    def value(self, name: str, compute: Callable[[], Any]) -> Any:
        """A JSON-serialisable value computed in-process (psutil, platform), named for replay."""
        raise NotImplementedError


class LiveHost(Host):
    def run(self, argv: list[str], timeout: float = 2.0) -> CommandResult:
        exe = shutil.which(argv[0])
        if exe is None:
            return CommandResult(tuple(argv), None, "", "", "not installed")
        try:
            proc = subprocess.run(
                [exe, *argv[1:]],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                errors="replace",
            )
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(argv), None, "", "", f"timed out after {timeout:g}s")
        except OSError as exc:
            return CommandResult(tuple(argv), None, "", "", f"cannot run ({exc.strerror})")
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def read(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read(1 << 20)
        except OSError:
            return None

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return None

    def value(self, name: str, compute: Callable[[], Any]) -> Any:
        return compute()


class RecordingHost(LiveHost):
    """A LiveHost that writes everything it saw under `directory` (see docs/recordings.md)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict] = {"commands": {}, "files": {}, "dirs": {}, "values": {}}
        self._lock = threading.Lock()

    def run(self, argv: list[str], timeout: float = 2.0) -> CommandResult:
        result = super().run(argv, timeout)
        with self._lock:
            self._index["commands"][" ".join(argv)] = asdict(result) | {"argv": list(argv)}
        return result

    def read(self, path: str) -> str | None:
        text = super().read(path)
        with self._lock:
            if text is None:
                self._index["files"][path] = None
            else:
                rel = "files" + path
                target = self.directory / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                self._index["files"][path] = rel
        return text

    def listdir(self, path: str) -> list[str] | None:
        names = super().listdir(path)
        with self._lock:
            self._index["dirs"][path] = names
        return names

    def value(self, name: str, compute: Callable[[], Any]) -> Any:
        result = compute()
        with self._lock:
            self._index["values"][name] = result
        return result

    def save(self) -> Path:
        index = self.directory / INDEX
        index.write_text(json.dumps(self._index, indent=1, sort_keys=True) + "\n")
        return index


class ReplayHost(Host):
    """Answers from a recording. What the recording lacks is answered as 'not present'."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = self.directory / INDEX
        try:
            self._index = json.loads(index.read_text())
        except FileNotFoundError:

            raise BadInput(f"{index}: no recording here (expected {INDEX}; see docs/recordings.md)") from None
        except json.JSONDecodeError as exc:

            raise BadInput(f"{index}:{exc.lineno}: not valid JSON ({exc.msg})") from None

    def run(self, argv: list[str], timeout: float = 2.0) -> CommandResult:
        rec = self._index.get("commands", {}).get(" ".join(argv))
        if rec is None:
            return CommandResult(tuple(argv), None, "", "", "not installed")
        if rec.get("hang"):
            # A recording may say a command hung; replay it as the timeout it would have hit.
            return CommandResult(tuple(argv), None, "", "", f"timed out after {timeout:g}s")
        return CommandResult(
            tuple(argv), rec.get("returncode"), rec.get("stdout", ""), rec.get("stderr", ""), rec.get("error")
        )

    def read(self, path: str) -> str | None:
        rel = self._index.get("files", {}).get(path)
        if rel is None:
            return None
        try:
            return (self.directory / rel).read_text()
        except OSError:
            return None

    def listdir(self, path: str) -> list[str] | None:
        return self._index.get("dirs", {}).get(path)

    def value(self, name: str, compute: Callable[[], Any]) -> Any:
        return self._index.get("values", {}).get(name)

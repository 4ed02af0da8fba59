"""Progress for long work (builds, downloads) and step-by-step output for apply.

People on a terminal get one updating line per task; logs and CI get a line per 10% so a build
that takes minutes still shows it is alive; `--json` runs send progress to stderr so stdout
stays one JSON document.
"""

from __future__ import annotations

import sys
import threading
import time


class Reporter:
    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
            self.stream.flush()

    def progress(self, task: str, fraction: float, detail: str = "") -> None:
        """Report `fraction` (0..1) of `task`. Non-terminals get a line per 10%."""
        if self.quiet:
            return
        pct = max(0, min(100, int(fraction * 100)))
        now = time.monotonic()
        self._started.setdefault(task, now)
        elapsed = now - self._started[task]
        with self._lock:
            if self.tty:
                bar = "#" * (pct // 5) + "-" * (20 - pct // 5)
                self.stream.write(f"\r\033[K  {task} [{bar}] {pct:3d}% {elapsed:5.0f}s {detail[:50]}")
                if pct >= 100:
                    self.stream.write("\n")
                self.stream.flush()
            elif pct // 10 > self._last.get(task, -1):
                self._last[task] = pct // 10
                self.stream.write(f"  {task}: {pct}% ({elapsed:.0f}s) {detail[:60]}\n")
                self.stream.flush()

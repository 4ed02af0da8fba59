"""Progress for long work (builds, downloads) and step-by-step output for apply.

Three ways to show it, chosen by where it goes:
- a terminal: one live line per task, tasks side by side without overwriting each other
  (bytes, rate and ETA for transfers; percent and the current step for builds), drawn by rich,
  which is imported only when there is progress to show (a no-op run never pays for it);
- a log or CI: a line per task per 10%;
- `--json`: JSON lines on stderr ({"event": "progress", ...}), so stdout stays one document.
"""

from __future__ import annotations

import json
import sys
import threading
import time


class _Task:
    def __init__(self, now: float, done: float):
        self.start, self.start_done, self.last_decile, self.last_emit = now, done, -1, 0.0
        self.handle = None  # rich's task id


class Reporter:
    def __init__(self, stream=None, quiet: bool = False, json_lines: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.json_lines = json_lines
        self.tty = not json_lines and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._live = None  # rich.progress.Progress while tasks are shown on a terminal

    # --- lines ---------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.json_lines:
                self._emit({"event": "line", "text": text.strip()})
            elif self._live is not None:
                self._live.console.print(text, highlight=False, markup=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    # --- progress ------------------------------------------------------------------------------
    def progress(self, task: str, fraction: float, detail: str = "") -> None:
        """`fraction` (0..1) of a task measured in steps (a build's percent)."""
        self._update(task, max(0.0, min(1.0, fraction)) * 100, 100, detail, unit="%", finished=fraction >= 1)

    def transfer(self, task: str, done: int, total: int | None, finished: bool = False) -> None:
        """`done` of `total` bytes of a download or copy."""
        self._update(task, done, total, "", unit="B", finished=finished)

    def _update(self, name: str, done: float, total: float | None, detail: str, unit: str, finished: bool) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = _Task(now, done)
            elapsed = now - task.start
            rate = (done - task.start_done) / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if total and rate > 0 and done < total else None
            fraction = done / total if total else None
            if self.json_lines:
                decile = int((fraction or 0) * 10)
                if finished or decile > task.last_decile or now - task.last_emit >= 1.0:
                    task.last_decile, task.last_emit = decile, now
                    self._emit({"event": "progress", "task": name, "done": done, "total": total, "unit": unit,
                                "fraction": round(fraction, 4) if fraction is not None else None,
                                "rate_per_s": round(rate, 1), "eta_s": round(eta, 1) if eta is not None else None,
                                "detail": detail, "finished": finished})
            elif self.tty:
                self._draw(task, name, done, total, detail, unit, finished)
            else:
                decile = int((fraction or 0) * 10)
                if finished or decile > task.last_decile:
                    task.last_decile = decile
                    self.stream.write(f"  {name}: {_describe(done, total, rate, eta, unit, elapsed)} {detail[:60]}"
                                      .rstrip() + "\n")
                    self.stream.flush()
            if finished:
                self._tasks.pop(name, None)
                if self._live is not None and not self._tasks:
                    self._live.stop()
                    self._live = None

    def _draw(self, task: _Task, name: str, done, total, detail: str, unit: str, finished: bool) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._live = Progress(TextColumn("  {task.description}"), BarColumn(), TaskProgressColumn(),
                                  DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[detail]}"),
                                  console=Console(file=self.stream), transient=False)
            self._live.start()
        if task.handle is None:
            task.handle = self._live.add_task(name, total=total, detail="")
        shown_detail = detail[:40]
        if unit == "%":  # a build: the percent is the bar; bytes columns stay empty
            self._live.update(task.handle, completed=done, total=100, detail=shown_detail)
        else:
            self._live.update(task.handle, completed=done, total=total, detail=shown_detail)

    def _emit(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _describe(done, total, rate, eta, unit: str, elapsed: float) -> str:
    if unit == "%":
        return f"{int(done)}% ({elapsed:.0f}s)"
    pct = f"{100 * done / total:.0f}% " if total else ""
    tail = f", ETA {eta:.0f}s" if eta is not None else ""
    of = f" of {_size(total)}" if total else ""
    return f"{pct}({_size(done)}{of}, {_size(rate)}/s{tail})"

"""The supervisor (`farmhand run`): runs the rendered runtime specs, one session each.

One main thread owns every process: it spawns (so PR_SET_PDEATHSIG is tied to a thread that
lives as long as the supervisor), applies state-machine transitions (states.py) from an event
queue, schedules restarts with backoff, and stops everything on SIGTERM/SIGINT. Helper threads
only watch (readiness probes, log pipes) and post events. GET /health on loopback reports
every runtime; sd_notify tells systemd READY=1 / STATUS= / STOPPING=1.
"""

from __future__ import annotations

import collections
import fcntl
import http.client
import json
import os
import queue
import random
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from . import ports, process
from .errors import Conflict, FarmhandError
from .ledger import atomic_write
from .paths import Paths
from .states import State, next_state

LOG_TAIL_LINES = 40
FIRST_PROBE_DELAY = 0.002
PROBE_GROWTH = 1.3
PROBE_MAX_DELAY = 0.015  # keeps "ready" within ~15 ms of the first 200 without hammering


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram to $NOTIFY_SOCKET (systemd Type=notify); False when unset."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def expand_env(value: str, env: dict[str, str]) -> str:
    """Resolve ${env:VAR} references at spawn time; specs on disk only hold the reference."""
    import re

    return re.sub(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), value)


class RotatingLog:
    """A runtime's stdout/stderr: size-based rotation (log, log.1 … log.N) and a tail in memory."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - lives as long as the runtime

    def write(self, line: bytes) -> None:
        self.tail.append(line.decode(errors="replace").rstrip())
        if self._fh.tell() + len(line) > self.max_bytes:
            self._rotate()
        self._fh.write(line)
        self._fh.flush()

    def _rotate(self) -> None:
        self._fh.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "wb")  # noqa: SIM115

    def close(self) -> None:
        self._fh.close()


class Runtime:
    def __init__(self, spec: dict, paths: Paths):
        self.spec = spec
        self.name = spec["name"]
        self.state = State.STOPPED
        self.generation = 0
        self.popen = None
        self.ident: process.Identity | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.ready_wall: float | None = None
        self.restarts = 0
        self.failures: list[float] = []
        self.last_probe_ms: float | None = None
        self.last_error: str | None = None
        self.next_start: float | None = None
        self.log = RotatingLog(paths.logs / f"{self.name}.log", spec.get("log_max_bytes", 10 << 20),
                               spec.get("log_backups", 3))

    def transition(self, event: str) -> None:
        self.state = next_state(self.state, event)

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.name,
            "state": self.state.value,
            "pid": self.ident.pid if self.ident and self.state in (State.STARTING, State.READY) else None,
            "port": self.spec["port"],
            "url": self.spec.get("base_url"),
            "uptime_s": round(now - self.ready_at, 3) if self.ready_at and self.state == State.READY else 0,
            "ready_after_s": round(self.ready_at - self.started_at, 4) if self.ready_at and self.started_at else None,
            "ready_wall": self.ready_wall,
            "restarts": self.restarts,
            "last_probe_ms": self.last_probe_ms,
            "models": self.spec.get("models", []),
            "last_error": self.last_error,
            "log": str(self.log.path),
            "log_tail": list(self.log.tail)[-10:] if self.state in (State.FAILED, State.BACKOFF) else [],
        }


class Supervisor:
    def __init__(self, paths: Paths, specs: dict):
        self.paths = paths
        self.specs = specs
        self.events: queue.Queue = queue.Queue()
        self.runtimes = [Runtime(s, paths) for s in specs["runtimes"]]
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.shutting_down = False
        self.notified_ready = False
        self.http: ThreadingHTTPServer | None = None
        self._lock_fd: int | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One supervisor per farmhand home: an flock on supervisor.lock, checked against its inode
        so a lock file unlinked by a stopping supervisor is never trusted."""
        path = self.paths.supervisor_lock
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                running = _read_json(self.paths.supervisor_address) or {}
                raise Conflict(f"a supervisor is already running for {self.paths.state} "
                               f"(pid {running.get('pid', '?')})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def run(self) -> int:
        self.acquire_lock()
        process.become_subreaper()
        signal.signal(signal.SIGTERM, lambda *_: self.events.put(("shutdown", None, None)))
        signal.signal(signal.SIGINT, lambda *_: self.events.put(("shutdown", None, None)))
        # Orphans reparented to us (we are a subreaper) are reaped when SIGCHLD says so,
        # not by scanning /proc on a timer.
        signal.signal(signal.SIGCHLD, lambda *_: self.events.put(("sigchld", None, None)))
        try:
            self._reap_previous()
            self._serve_health()
            self._write_processes()
            for rt in self.runtimes:
                self._start(rt)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _reap_previous(self) -> None:
        """A previous supervisor was killed: stop what it left (identity-checked) first."""
        old = _read_json(self.paths.state / "processes.json") or {}
        records = list(old.get("runtimes", {}).values())
        if records:
            killed = process.reap_leftovers(records)
            if killed:
                print(f"farmhand: reaped {len(killed)} leftover process(es) of a previous supervisor: {killed}",
                      flush=True)

    def _serve_health(self) -> None:
        conf = self.specs.get("supervisor", {})
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/health":
                    self.send_error(404)
                    return
                body = supervisor.health()
                data = json.dumps(body).encode()
                self.send_response(200 if body["status"] == "ok" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer((conf.get("host", "127.0.0.1"), conf.get("port", 0)), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="health", daemon=True).start()
        me = process.identity_of(os.getpid())
        atomic_write(self.paths.supervisor_address, json.dumps({
            "pid": me.pid, "create_time": me.create_time, "sid": me.sid,
            "host": self.http.server_address[0], "port": self.http.server_address[1],
            "spec_digest": self.specs.get("digest"),
        }) + "\n", 0o600)

    def health(self) -> dict:
        with self.lock:
            runtimes = [rt.snapshot() for rt in self.runtimes]
        states = {r["state"] for r in runtimes}
        status = ("ok" if states == {"ready"} else "failed" if "failed" in states else
                  "stopping" if self.shutting_down else "starting")
        return {
            "status": status,
            "spec_digest": self.specs.get("digest"),
            "supervisor": {"pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3)},
            "runtimes": runtimes,
        }

    # --- the event loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            timeout = self._next_timer()
            try:
                kind, rt, payload = self.events.get(timeout=timeout)
            except queue.Empty:
                kind, rt, payload = "timer", None, None
            if kind == "shutdown":
                return
            if kind == "sigchld":
                process.reap_zombies(keep={r.popen.pid for r in self.runtimes if r.popen is not None})
                continue
            if kind == "timer":
                self._fire_timers()
                continue
            gen, data = payload
            if rt.generation != gen:
                continue  # an event from a previous incarnation
            with self.lock:
                if kind == "ready" and rt.state == State.STARTING:
                    rt.ready_at, rt.ready_wall, rt.last_probe_ms = data
                    rt.transition("probe_ok")
                elif kind == "exited" and rt.state in (State.STARTING, State.READY):
                    rt.last_error = f"exited with code {data}" + (" while starting" if rt.state == State.STARTING else "")
                    self._cleanup_session(rt)
                    self._crashed(rt, "exited")
                elif kind == "start_timeout" and rt.state == State.STARTING:
                    rt.last_error = f"not ready after {rt.spec['start_timeout_s']}s"
                    self._cleanup_session(rt)
                    self._crashed(rt, "start_timeout")
            self._write_processes()
            self._notify()

    def _next_timer(self) -> float:
        pending = [rt.next_start for rt in self.runtimes if rt.state == State.BACKOFF and rt.next_start]
        if not pending:
            return 5.0
        return max(0.0, min(min(pending) - time.monotonic(), 5.0))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for rt in self.runtimes:
            if rt.state == State.BACKOFF and rt.next_start and rt.next_start <= now:
                rt.restarts += 1
                self._start(rt)

    def _crashed(self, rt: Runtime, event: str) -> None:
        """Backoff with jitter, or give up after max_failures within failure_window_s."""
        restart = rt.spec["restart"]
        now = time.monotonic()
        rt.failures = [t for t in rt.failures if now - t < restart["window_s"]] + [now]
        if len(rt.failures) >= restart["max_failures"]:
            rt.transition("give_up")
            rt.last_error = f"{rt.last_error}; gave up after {len(rt.failures)} failures in {restart['window_s']}s"
            return
        rt.transition(event)
        delay = min(restart["backoff_max_s"], restart["backoff_initial_s"] * 2 ** (len(rt.failures) - 1))
        rt.next_start = now + delay * random.uniform(0.8, 1.2)

    def _start(self, rt: Runtime) -> None:
        with self.lock:
            rt.transition("start")
            rt.generation += 1
            rt.ready_at = None
            rt.last_probe_ms = None
            port = rt.spec["port"]
            if not ports.is_free(port):
                pid, cmd = ports.holder(port)
                rt.last_error = (f"port {port} is held by {'pid ' + str(pid) + ' (' + cmd + ')' if pid else cmd}, "
                                 "which farmhand did not start; not stopping it")
                rt.transition("give_up")
                self._notify()
                return
            env = {**os.environ, **{k: expand_env(v, os.environ) for k, v in rt.spec.get("env", {}).items()}}
            argv = [expand_env(a, os.environ) for a in rt.spec["argv"]]
            read_end, write_end = os.pipe()
            try:
                rt.popen = process.spawn(argv, env, write_end)
            except OSError as exc:
                os.close(read_end)
                rt.popen = None
                rt.last_error = f"cannot start {argv[0]}: {exc.strerror}"
                rt.transition("give_up")
                return
            finally:
                os.close(write_end)  # the child has its copy; ours would keep the pipe open
            rt.started_at = time.monotonic()
            rt.ident = process.identity_of(rt.popen.pid) or process.Identity(rt.popen.pid, time.time(), rt.popen.pid)
            gen = rt.generation
        self._write_processes()
        threading.Thread(target=self._pump_log, args=(rt, read_end), daemon=True, name=f"log-{rt.name}").start()
        threading.Thread(target=self._watch, args=(rt, gen), daemon=True, name=f"watch-{rt.name}").start()

    def _pump_log(self, rt: Runtime, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                rt.log.write(line)

    def _watch(self, rt: Runtime, gen: int) -> None:
        """Poll the readiness probe with a growing interval; then wait for the process to exit."""
        popen = rt.popen
        probe = urlparse(rt.spec["readiness"]["url"])
        expect = rt.spec["readiness"].get("expect", 200)
        deadline = time.monotonic() + rt.spec["start_timeout_s"]
        delay = FIRST_PROBE_DELAY
        while True:
            rc = popen.poll()
            if rc is not None:
                self.events.put(("exited", rt, (gen, rc)))
                return
            t0 = time.monotonic()
            if probe_once(probe.hostname, probe.port, probe.path, expect):
                now = time.monotonic()
                self.events.put(("ready", rt, (gen, (now, time.time(), round((now - t0) * 1000, 2)))))
                break
            if time.monotonic() > deadline:
                self.events.put(("start_timeout", rt, (gen, None)))
                return
            time.sleep(delay)
            delay = min(delay * PROBE_GROWTH, PROBE_MAX_DELAY)
        rc = popen.wait()
        self.events.put(("exited", rt, (gen, rc)))

    def _cleanup_session(self, rt: Runtime) -> None:
        """The leader is gone; anything it forked into the background goes with it."""
        if rt.ident is not None:
            process.stop_session(rt.ident, rt.popen, signal.SIGKILL, 0)

    def _notify(self) -> None:
        states = [rt.state for rt in self.runtimes]
        summary = ", ".join(f"{rt.name} {rt.state.value}" for rt in self.runtimes)
        try:
            if not self.notified_ready and all(s == State.READY for s in states):
                self.notified_ready = True
                sd_notify(f"READY=1\nSTATUS=ready: {summary}")
            else:
                sd_notify(f"STATUS={summary}")
        except OSError:
            pass

    # --- stopping -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.shutting_down = True
        try:
            sd_notify("STOPPING=1")
        except OSError:
            pass
        for rt in self.runtimes:
            with self.lock:
                if rt.state == State.STOPPED:
                    continue
                rt.transition("stop")
                rt.generation += 1
            if rt.ident is not None and rt.popen is not None:
                sig = getattr(signal, rt.spec.get("stop_signal", "SIGTERM"))
                process.stop_session(rt.ident, rt.popen, sig, rt.spec.get("grace_s", 10))
                ports.wait_free(rt.spec["port"], 5.0)
            with self.lock:
                rt.transition("stopped")
            rt.log.close()
        if self.http is not None:
            # Closing the socket is enough: the serving thread is a daemon and we are exiting.
            # (shutdown() would wait out serve_forever's 0.5 s poll.)
            self.http.server_close()
        for path in (self.paths.state / "processes.json", self.paths.supervisor_address):
            path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            self.paths.supervisor_lock.unlink(missing_ok=True)
            os.close(self._lock_fd)

    def _write_processes(self) -> None:
        records = {rt.name: rt.ident.to_json() for rt in self.runtimes
                   if rt.ident is not None and rt.state not in (State.STOPPED,)}
        atomic_write(self.paths.state / "processes.json", json.dumps({"runtimes": records}) + "\n", 0o600)


def probe_once(host: str, port: int, path: str, expect: int, timeout: float = 2.0) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == expect
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_foreground(paths: Paths) -> int:
    specs = _read_json(paths.runtimes)
    if not specs or not specs.get("runtimes"):
        raise FarmhandError(f"no runtime specs at {paths.runtimes}; run `farmhand apply` first")
    return Supervisor(paths, specs).run()

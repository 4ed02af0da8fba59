"""The supervisor (`farmhand run`): runs the runtimes in runtimes.json, one session each.

One main thread owns every process: it spawns (so PR_SET_PDEATHSIG is tied to a thread that
lives as long as the supervisor), applies state-machine transitions (states.py) from an event
queue, schedules restarts (policy.py), and stops everything on SIGTERM/SIGINT, all runtimes
at once. Helper threads only watch (readiness probes, log pipes) and post events. The pieces
it uses live beside it: lock.py (one supervisor per home), health.py (GET /health),
runlog.py (rotated logs), notify.py (sd_notify), process.py (identity, spawn, stop).
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from urllib.parse import urlparse

import psutil

from . import ports, process, shm, statefiles
from .errors import Conflict, FarmhandError
from .health import HealthServer
from .lock import InstanceLock, LockHeld
from .notify import sd_notify
from .observed import ProbeLatency, RuntimeView
from .paths import Paths
from .readiness import FIRST_PROBE_DELAY, next_probe_delay, probe_once
from .refs import MissingSecret, expand_env
from .runlog import RotatingLog
from .specs import RuntimeSpec, SupervisorSpec, inherited_env
from .states import RUNNING, State, next_state


class Runtime:
    def __init__(self, spec: RuntimeSpec, paths: Paths):
        self.spec = spec
        self.name = spec.name
        self.state = State.STOPPED
        self.generation = 0
        self.popen = None
        self.ident: process.Identity | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.ready_wall: float | None = None
        self.restarts = 0
        self.misses = 0  # liveness probes missed in a row
        self.failures: list[float] = []
        self.last_probe_ms: float | None = None
        self.last_error: str | None = None
        self.next_start: float | None = None
        self.shm: set[str] = set()  # /dev/shm segments its processes were seen using (shm.py)
        self.probe_token = ""  # its API key as resolved at spawn, for a readiness probe behind it
        self.metrics_token = ""  # the same, for a scrape of its own /metrics
        self.log = RotatingLog(paths.runtime_log(self.name), spec.log_max_bytes, spec.log_backups)

    def transition(self, event: str) -> None:
        before, self.state = self.state, next_state(self.state, event)
        if before != self.state:  # one line per change: the journal's (or the log's) history of the runtime
            print(f"farmhand: {self.name}: {before.value} -> {self.state.value} ({event})", flush=True)

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.name,
            "backend": self.spec.backend,
            "state": self.state.value,
            "pid": self.ident.pid if self.ident and self.state in RUNNING else None,
            "port": self.spec.port,
            "url": self.spec.base_url,
            "devices": list(self.spec.devices),
            "uptime_s": round(now - self.ready_at, 3) if self.ready_at and self.state == State.READY else 0,
            "ready_after_s": round(self.ready_at - self.started_at, 4) if self.ready_at and self.started_at else None,
            "ready_wall": self.ready_wall,
            "restarts": self.restarts,
            "probe_misses": self.misses,
            "last_probe_ms": self.last_probe_ms,
            "models": list(self.spec.models),
            "models_url": self.spec.models_url or None,  # a router's GET /models (status asks it what is loaded)
            "last_error": self.last_error,
            "log": str(self.log.path),
            "log_tail": list(self.log.tail)[-10:] if self.state in (State.FAILED, State.BACKOFF, State.UNHEALTHY)
            else [],
        }


class Supervisor:
    def __init__(self, paths: Paths, spec: SupervisorSpec):
        self.paths = paths
        self.spec = spec
        # SimpleQueue: signal handlers put events too, and Queue.put can deadlock when a signal
        # lands while the main thread holds Queue's lock inside get(); SimpleQueue.put is reentrant.
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.runtimes = [Runtime(s, paths) for s in spec.runtimes]
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.shutting_down = False
        self.notified_ready = False
        self.epoch = 0  # counts `farmhand up` retries of failed runtimes (SIGUSR1)
        self.health_server: HealthServer | None = None
        self.probe_latency = ProbeLatency()
        self._metrics = None  # made at the first scrape (metrics.py)
        self._written_processes: dict | None = None
        self.instance = InstanceLock(paths.supervisor_lock)

    # --- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.instance.acquire()
        except LockHeld:
            running, _ = statefiles.read_supervisor(self.paths)
            raise Conflict(f"a supervisor is already running for {self.paths.state} "
                           f"(pid {running.ident.pid if running else '?'})") from None
        process.become_subreaper()
        signal.signal(signal.SIGTERM, lambda *_: self.events.put(("shutdown", None, None)))
        signal.signal(signal.SIGINT, lambda *_: self.events.put(("shutdown", None, None)))
        # Orphans reparented to us (we are a subreaper) are reaped when SIGCHLD says so,
        # not by scanning /proc on a timer.
        signal.signal(signal.SIGCHLD, lambda *_: self.events.put(("sigchld", None, None)))
        # `farmhand up` with runtimes that gave up: start them again with a fresh failure budget.
        signal.signal(signal.SIGUSR1, lambda *_: self.events.put(("retry_failed", None, None)))
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
        records = [i.to_json() for i in statefiles.read_processes(self.paths).values()]
        if records:
            killed = process.reap_leftovers(records)
            if killed:
                print(f"farmhand: reaped {len(killed)} leftover process(es) of a previous supervisor: {killed}",
                      flush=True)

    def _serve_health(self) -> None:
        try:
            self.health_server = HealthServer(self.spec.host, self.spec.port, self.health, self.metrics_text)
        except OSError as exc:
            pid, cmd = ports.holder(self.spec.port)
            who = f"pid {pid} ({cmd})" if pid else cmd
            raise Conflict(f"the supervisor's port {self.spec.port} on {self.spec.host} is not available "
                           f"({exc.strerror}; held by {who}); set supervisor.port in the overrides") from None
        self.health_server.start()
        me = process.identity_of(os.getpid())
        host, port = self.health_server.address
        statefiles.write_supervisor(self.paths, statefiles.SupervisorRecord(me, host, port, self.spec.digest))

    def health(self) -> dict:
        with self.lock:
            runtimes = [rt.snapshot() for rt in self.runtimes]
        states = {r["state"] for r in runtimes}
        status = ("ok" if states == {"ready"} else "failed" if "failed" in states else
                  "stopping" if self.shutting_down else "degraded" if "unhealthy" in states else "starting")
        return {
            "status": status,
            "epoch": self.epoch,
            "spec_digest": self.spec.digest,
            "supervisor": {"pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3)},
            "runtimes": runtimes,
        }

    def metrics_text(self) -> bytes:
        """GET /metrics. prometheus-client is imported at the first scrape, never at start: it
        is ~30 ms of every `farmhand up` otherwise."""
        if self._metrics is None:
            from .metrics import SupervisorMetrics

            self._metrics = SupervisorMetrics(self.paths, self.metric_views, self.probe_latency)
        return self._metrics.render()

    def metric_views(self) -> list[RuntimeView]:
        """Each runtime as /metrics reports it, read under the lock."""
        now = time.monotonic()
        with self.lock:
            return [RuntimeView(
                name=rt.name, backend=rt.spec.backend, variant=rt.spec.variant, state=rt.state.value,
                restarts=rt.restarts,
                ready_after_s=rt.ready_at - rt.started_at if rt.ready_at and rt.started_at else None,
                uptime_s=now - rt.ready_at if rt.ready_at and rt.state == State.READY else 0.0,
                pid=rt.ident.pid if rt.ident and rt.state in RUNNING else None, devices=tuple(rt.spec.devices),
                roles=rt.spec.roles, models=rt.spec.models, metrics_url=rt.spec.metrics_url,
                metrics_token=rt.metrics_token) for rt in self.runtimes]

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
            if kind == "retry_failed":
                self._retry_failed()
                continue
            gen, data = payload
            if rt.generation != gen:
                continue  # an event from a previous incarnation
            with self.lock:
                if kind == "ready" and rt.state == State.STARTING:
                    rt.ready_at, rt.ready_wall, rt.last_probe_ms = data
                    rt.transition("probe_ok")
                elif kind == "live" and rt.state in (State.READY, State.UNHEALTHY):
                    self._liveness(rt, data)
                elif kind == "exited" and rt.state in RUNNING:
                    rt.last_error = f"exited with code {data}" + (" while starting" if rt.state == State.STARTING else "")
                    self._cleanup_session(rt)
                    self._crashed(rt, "exited")
                elif kind == "start_timeout" and rt.state == State.STARTING:
                    rt.last_error = f"not ready after {rt.spec.start_timeout_s}s"
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

    def _liveness(self, rt: Runtime, answered: bool) -> None:
        if answered:
            rt.misses = 0
            if rt.state == State.UNHEALTHY:
                rt.transition("probe_ok")
                rt.last_error = None
            return
        rt.misses += 1
        limit = rt.spec.liveness_misses
        if rt.state == State.READY:
            rt.transition("probe_miss")
        rt.last_error = (f"not answering {rt.spec.readiness_url} ({rt.misses} of {limit} probes missed in a row, "
                         f"{rt.spec.liveness_timeout_s:g}s each)")
        if rt.misses >= limit:
            rt.last_error += "; killed to restart it"
            self._cleanup_session(rt)  # SIGKILL reaches a stopped (SIGSTOP) or wedged process too
            self._crashed(rt, "hung")

    def _retry_failed(self) -> None:
        with self.lock:
            failed = [rt for rt in self.runtimes if rt.state == State.FAILED]
            for rt in failed:
                rt.transition("reset")
                rt.failures = []
            self.epoch += 1
        for rt in failed:
            self._start(rt)
        self._notify()

    def _crashed(self, rt: Runtime, event: str) -> None:
        now = time.monotonic()
        rt.failures, delay = rt.spec.restart.after_failure(rt.failures, now)
        if delay is None:
            rt.transition("give_up")
            rt.last_error = f"{rt.last_error}; gave up after {len(rt.failures)} failures in {rt.spec.restart.window_s}s"
            return
        rt.transition(event)
        rt.next_start = now + delay

    def _start(self, rt: Runtime) -> None:
        with self.lock:
            rt.transition("start")
            rt.generation += 1
            rt.ready_at = None
            rt.last_probe_ms = None
            rt.misses = 0
            port = rt.spec.port
            if not ports.is_free(port):
                pid, cmd = ports.holder(port)
                rt.last_error = (f"port {port} is held by {'pid ' + str(pid) + ' (' + cmd + ')' if pid else cmd}, "
                                 "which farmhand did not start; not stopping it")
                rt.transition("give_up")
                self._notify()
                return
            try:
                env = {**inherited_env(os.environ), **{k: expand_env(v, os.environ) for k, v in rt.spec.env}}
                argv = [expand_env(a, os.environ) for a in rt.spec.argv]
                rt.probe_token = env.get(rt.spec.readiness_key_env, "") if rt.spec.readiness_key_env else ""
                rt.metrics_token = env.get(rt.spec.metrics_key_env, "") if rt.spec.metrics_key_env else ""
            except MissingSecret as missing:
                rt.last_error = (f"{missing.var} is not set (or empty): refusing to start {rt.name} without its "
                                 "API key; set it in the supervisor's environment")
                rt.transition("give_up")
                self._notify()
                return
            read_end, write_end = os.pipe()
            try:
                rt.popen, rt.ident = process.spawn(argv, env, write_end)
            except OSError as exc:
                os.close(read_end)
                rt.popen = None
                rt.last_error = f"cannot start {argv[0]}: {exc.strerror}"
                rt.transition("give_up")
                return
            finally:
                os.close(write_end)  # the child has its copy; ours would keep the pipe open
            rt.started_at = time.monotonic()
            gen = rt.generation
        self._write_processes()
        threading.Thread(target=self._pump_log, args=(rt, read_end), daemon=True, name=f"log-{rt.name}").start()
        threading.Thread(target=self._watch, args=(rt, gen), daemon=True, name=f"watch-{rt.name}").start()

    def _pump_log(self, rt: Runtime, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                rt.log.write(line)

    def _watch(self, rt: Runtime, gen: int) -> None:
        """Poll the readiness probe with a growing interval; then, until the process exits, probe
        its liveness every liveness_interval_s (a stopped or wedged server answers nothing)."""
        popen = rt.popen
        probe = urlparse(rt.spec.readiness_url)
        started = time.monotonic()
        deadline = started + rt.spec.start_timeout_s
        delay = FIRST_PROBE_DELAY
        while True:
            rc = popen.poll()
            if rc is not None:
                self.events.put(("exited", rt, (gen, rc)))
                return
            t0 = time.monotonic()
            if probe_once(probe.hostname, probe.port, probe.path, rt.spec.readiness_expect,
                          rt.spec.readiness_timeout_s, rt.spec.readiness_body, rt.probe_token):
                self._note_shm(rt, popen)
                now = time.monotonic()
                self.events.put(("ready", rt, (gen, (now, time.time(), round((now - t0) * 1000, 2)))))
                break
            if time.monotonic() > deadline:
                self.events.put(("start_timeout", rt, (gen, None)))
                return
            time.sleep(min(delay, max(0.0, deadline - time.monotonic()) + 0.001))
            delay = next_probe_delay(delay, time.monotonic() - started)
        spec = rt.spec
        live = urlparse(spec.liveness_url) if spec.liveness_url else probe
        while True:
            rc = process.wait_exit(popen, spec.liveness_interval_s)
            if rc is None:
                if rt.generation != gen:
                    return  # stopped or restarted: another watcher owns the new process
                t0 = time.monotonic()
                answered = probe_once(live.hostname, live.port, live.path, 200 if spec.liveness_url else
                                      spec.readiness_expect, timeout=spec.liveness_timeout_s,
                                      body="" if spec.liveness_url else spec.readiness_body, token=rt.probe_token)
                if answered:
                    self.probe_latency.observe(rt.name, time.monotonic() - t0)
                self.events.put(("live", rt, (gen, answered)))
                self._note_shm(rt, popen)
                continue
            self.events.put(("exited", rt, (gen, rc)))
            return

    def _cleanup_session(self, rt: Runtime) -> None:
        """The leader is gone; anything it forked into the background goes with it, and so does
        the shared memory they left."""
        if rt.ident is not None:
            process.stop_session(rt.ident, rt.popen, signal.SIGKILL, 0)
        self._release_shm(rt)

    def _release_shm(self, rt: Runtime) -> None:
        removed = shm.release(rt.shm)
        rt.shm.clear()
        if removed:
            print(f"farmhand: {rt.name}: removed shared memory it left: {', '.join(removed)}", flush=True)

    @staticmethod
    def _note_shm(rt: Runtime, popen) -> None:
        """The /dev/shm segments the runtime's processes use now (its leader and descendants)."""
        try:
            leader = psutil.Process(popen.pid)
            pids = [leader.pid] + [c.pid for c in leader.children(recursive=True)]
        except psutil.Error:
            return
        rt.shm |= shm.used_by(pids)

    def _notify(self) -> None:
        states = [rt.state for rt in self.runtimes]
        summary = ", ".join(f"{rt.name} {rt.state.value}" for rt in self.runtimes)
        if not self.notified_ready and all(s == State.READY for s in states):
            self.notified_ready = True
            print(f"farmhand: ready: {summary}", flush=True)
            sd_notify(f"READY=1\nSTATUS=ready: {summary}")
        else:
            sd_notify(f"STATUS={summary}")

    # --- stopping -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Every runtime at once: its stop signal, its grace period, then SIGKILL."""
        self.shutting_down = True
        print("farmhand: stopping every runtime", flush=True)
        sd_notify("STOPPING=1")
        targets, stopping = [], []
        for rt in self.runtimes:
            with self.lock:
                if rt.state == State.STOPPED:
                    continue
                rt.transition("stop")
                rt.generation += 1
            stopping.append(rt)
            if rt.ident is not None and rt.popen is not None:
                targets.append(process.StopTarget(rt.ident, rt.popen, getattr(signal, rt.spec.stop_signal),
                                                  rt.spec.grace_s))
        process.stop_sessions(targets)
        for rt in stopping:
            self._release_shm(rt)
            ports.wait_free(rt.spec.port, 5.0)
            with self.lock:
                rt.transition("stopped")
            rt.log.close()
        if self.health_server is not None:
            self.health_server.close()
        if self._metrics is not None:
            self._metrics.close()
        for path in (self.paths.processes, self.paths.supervisor_address):
            path.unlink(missing_ok=True)
        self.instance.release()

    def _write_processes(self) -> None:
        """processes.json as it is now; not written again when unchanged (a liveness probe every
        few seconds per runtime would otherwise fsync it each time)."""
        idents = {rt.name: rt.ident for rt in self.runtimes if rt.ident is not None and rt.state != State.STOPPED}
        if idents == self._written_processes:
            return
        statefiles.write_processes(self.paths, idents)
        self._written_processes = idents


def run_foreground(paths: Paths) -> int:
    spec = statefiles.read_specs(paths)
    if spec is None or not spec.runtimes:
        raise FarmhandError(f"no runtime specs at {paths.runtimes}; run `farmhand apply` first")
    return Supervisor(paths, spec).run()

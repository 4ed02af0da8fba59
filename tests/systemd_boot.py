"""A real systemd, booted for a test as PID 1 of its own PID, mount, network, UTS and IPC namespaces.

The recipe (issue 12), with the order that keeps the machine safe:
- fresh tmpfs on /tmp, /var/tmp and /run, and `systemd-tmpfiles-setup.service` masked in
  /run/systemd/system BEFORE systemd starts: Debian's tmpfiles.d empties /tmp at boot, and a
  mount namespace does not protect the real /tmp from that;
- /etc/systemd/system is a copy, so what a test enables never reaches the machine's;
- its own network namespace (systemd brings up lo): network units, were any pulled in, cannot
  touch the machine's interfaces; its own UTS namespace keeps the hostname;
- it boots a target of its own that wants only the journal: no getty, cron, ssh or udev;
- units that write the kernel's global state are masked (sysctl, modules, udev, binfmt).
Paths a test needs that live under /tmp (a checkout in /tmp, say) are bind-mounted into the
new /tmp at the same place. Powered off with `systemctl poweroff`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
TARGET = "farmhand-test.target"
MASKED = ["systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service", "systemd-tmpfiles-clean.timer",
          "systemd-tmpfiles-clean.service", "systemd-sysctl.service", "systemd-modules-load.service",
          "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
          "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "systemd-random-seed.service",
          "systemd-remount-fs.service", "systemd-firstboot.service", "networking.service",
          "systemd-networkd.service", "systemd-timesyncd.service", "getty.target", "console-getty.service"]


def why_not() -> str | None:
    """Why a systemd cannot be booted here (None when it can)."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    if not os.path.exists(SYSTEMD) or not shutil.which("nsenter") or not shutil.which("unshare"):
        return f"{SYSTEMD}, unshare or nsenter is missing"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc", "--propagation",
                            "private", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare refused here: {probe.stderr.strip()}"
    return None


class BootedSystemd:
    def __init__(self, keep: list[Path], log: Path):
        self.keep = [p for p in keep if _under_tmp(p)]
        self.log = log
        self.etc_copy = Path(tempfile.mkdtemp(prefix="farmhand-systemd-etc-", dir="/var/tmp"))
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def boot(self, timeout: float = 90.0) -> None:
        subprocess.run(["cp", "-a", "/etc/systemd/system/.", str(self.etc_copy)], check=True)
        for wants in self.etc_copy.glob("*.wants"):
            if wants.is_dir() and not wants.is_symlink():
                shutil.rmtree(wants)  # nothing the machine enables starts in the test's boot
        # /tmp/X is bound at /mnt/X, which is /tmp/X again once the tmpfs moves from /mnt to /tmp
        inner = [(str(p.resolve()), "/mnt/" + str(p.resolve().relative_to("/tmp"))) for p in self.keep]
        binds = "".join(f"mkdir -p {shlex.quote(dst)} && mount --rbind {shlex.quote(src)} {shlex.quote(dst)} && "
                        for src, dst in inner)
        masks = " ".join(f"ln -sf /dev/null /run/systemd/system/{u};" for u in MASKED)
        target = ("[Unit]\nDescription=farmhand test boot\nWants=systemd-journald.socket "
                  "systemd-journald.service\nAllowIsolate=yes\n")
        script = (
            "set -e; "
            # /tmp first built on /mnt, with the kept paths bound in, then moved over /tmp
            f"mount --bind {shlex.quote(str(self.etc_copy))} /etc/systemd/system && "
            f"mount -t tmpfs -o mode=1777 tmpfs /mnt && {binds}mount --move /mnt /tmp && "
            "mount -t tmpfs -o mode=1777 tmpfs /var/tmp && mount -t tmpfs -o mode=755 tmpfs /run && "
            "if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi && "
            "mkdir -p /run/systemd/system && "
            f"{masks} "
            f"printf %s {shlex.quote(target)} > /run/systemd/system/{TARGET} && "
            f"exec {SYSTEMD} --system --unit={TARGET} --log-target=journal"
        )
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc", "--propagation", "private",
                 "--mount-proc", "/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "container": "farmhand-test"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pid = self._systemd_pid()
            if self.pid and self.run(["systemctl", "is-system-running"], check=False).stdout.strip() in (
                    "running", "degraded"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"systemd did not boot within {timeout}s; its console:\n{self.console()[-3000:]}")

    def _systemd_pid(self) -> int | None:
        import psutil

        try:
            for child in psutil.Process(self.proc.pid).children():
                if child.name() == "systemd":
                    return child.pid
        except psutil.Error:
            return None
        return None

    def console(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def run(self, argv: list[str], check: bool = True, env: dict | None = None, timeout: float = 600,
            namespaces: str = "-m -p -n -u -i") -> subprocess.CompletedProcess:
        """A command inside the booted system (its mounts, pids, network)."""
        assert self.pid
        cmd = ["nsenter", "-t", str(self.pid), *namespaces.split(), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"`{' '.join(argv)}` in the booted systemd failed (exit {proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.pid:
                self.run(["systemctl", "poweroff"], check=False, timeout=30)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:
                if self.pid:
                    try:
                        os.kill(self.pid, 9)  # PID 1 of its namespace: the kernel kills every process in it
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(30)
            shutil.rmtree(self.etc_copy, ignore_errors=True)


def _under_tmp(path: Path) -> bool:
    resolved = str(path.resolve())
    return resolved == "/tmp" or resolved.startswith("/tmp/")

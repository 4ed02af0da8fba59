"""`make deploy`: after apply, hand the supervisor to systemd when systemd runs this host.

Renders templates/farmhand.service.j2 (Type=notify, KillMode=control-group, hardening), installs
it as a system unit (--system) or a user unit, and enables it. Without systemd it says so and
leaves the supervisor running detached (`farmhand up`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import client
from .errors import FarmhandError
from .fsio import atomic_write
from .ledger import Ledger
from .llamafarm import template_env
from .lock import HomeLock
from .paths import Paths, resolve

REPO = Path(__file__).resolve().parent.parent


def render_unit(paths: Paths, python: str = sys.executable) -> str:
    env = template_env()
    writable = [str(p) for p in paths.roots()]
    # PrivateTmp hides the host's /tmp and /var/tmp from the service: a checkout or home there
    # (a CI clone, a trial) would vanish from under its own ExecStart.
    in_tmp = [p for p in [str(REPO), python, *writable] if _under_tmp(p)]
    return env.get_template("farmhand.service.j2").render(private_tmp=not in_tmp, in_tmp=in_tmp,
        python=python, repo=str(REPO), system=paths.mode == "system",
        home=os.environ.get("FARMHAND_HOME"), writable=writable,
        # A user-mode home lives under /home or /root: it must stay visible (read-only elsewhere).
        protect_home="yes" if paths.mode == "system" else "read-only",
    )


UNIT = "farmhand.service"


def _under_tmp(path: str) -> bool:
    resolved = os.path.realpath(path)
    return any(resolved == t or resolved.startswith(t + "/") for t in ("/tmp", "/var/tmp"))


def system_scope(paths: Paths) -> bool:
    """A system unit for a system install, and for root (root has no user manager to run one)."""
    return paths.mode == "system" or os.geteuid() == 0


def unit_path(paths: Paths) -> Path:
    if system_scope(paths):
        return Path("/etc/systemd/system") / UNIT
    return Path.home() / ".config" / "systemd" / "user" / UNIT


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def _systemctl(paths: Paths, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    scope = [] if system_scope(paths) else ["--user"]
    proc = subprocess.run(["systemctl", *scope, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:

        raise FarmhandError(f"systemctl {' '.join([*scope, *args])} failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc


def deploy(paths: Paths) -> dict:
    """Install (only when its text changed), enable and start the unit. An admin's drop-ins
    (farmhand.service.d/) are theirs: never read, written or removed here."""

    unit = unit_path(paths)
    text = render_unit(paths)
    try:
        changed = unit.read_text() != text
    except OSError:
        changed = True
    if changed:
        ledger = Ledger(paths)
        ledger.add_resource("unit", unit, "deploy")
        ledger.save()
        unit.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(unit, text, 0o644)
        _systemctl(paths, "daemon-reload")
    active = _systemctl(paths, "is-active", "--quiet", UNIT, check=False).returncode == 0
    enabled = _systemctl(paths, "is-enabled", "--quiet", UNIT, check=False).returncode == 0
    if not enabled:
        _systemctl(paths, "enable", UNIT)
    if not active:
        client.down(paths)  # systemd takes over from the detached supervisor apply started
        _systemctl(paths, "start", UNIT)  # Type=notify: returns once every runtime answers
    elif changed:
        _systemctl(paths, "restart", UNIT)
    action = "installed" if changed and not active else "updated and restarted" if changed else \
        "started" if not active else "unchanged"
    return {"unit": str(unit), "changed": changed or not active or not enabled, "action": action,
            "enabled": True, "active": True}


def undeploy(paths: Paths, ledger) -> list[str]:
    """Stop and disable the unit farmhand installed and remove its file; the admin's drop-ins stay."""
    removed = []
    for resource in [r for r in ledger.resources() if r["kind"] == "unit"]:
        unit = Path(resource["path"])
        if systemd_running():
            _systemctl(paths, "disable", "--now", unit.name, check=False)
        if unit.exists():
            unit.unlink()
            removed.append(str(unit))
        if systemd_running():
            _systemctl(paths, "daemon-reload", check=False)
    return removed


def main() -> int:
    import json

    paths = resolve(system=os.environ.get("FARMHAND_SYSTEM") == "1")
    as_json = "--json" in sys.argv[1:]
    try:
        HomeLock(paths.home_lock, "deploy").acquire()
        if not systemd_running():
            result = {"unit": None, "changed": False, "action": "no systemd: the supervisor stays detached "
                      "(farmhand up / farmhand down manage it)"}
        else:
            result = deploy(paths)
    except FarmhandError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if as_json:
        print(json.dumps(result))
    elif result["unit"] is None:
        print(f"deploy: {result['action']}")
    else:
        scope = "" if system_scope(paths) else " --user"
        print(f"deploy: {result['unit']} {result['action']} (systemctl{scope} status {UNIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

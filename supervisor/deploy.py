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

from .llamafarm import TEMPLATES
from .paths import Paths, resolve

REPO = Path(__file__).resolve().parent.parent


def render_unit(paths: Paths, python: str = sys.executable) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - a unit file, not HTML
    writable = [str(p) for p in paths.roots()]
    return env.get_template("farmhand.service.j2").render(
        python=python, repo=str(REPO), system=paths.mode == "system",
        home=os.environ.get("FARMHAND_HOME"), writable=writable,
        # A user-mode home lives under /home or /root: it must stay visible (read-only elsewhere).
        protect_home="yes" if paths.mode == "system" else "read-only",
    )


def unit_path(paths: Paths) -> Path:
    if paths.mode == "system":
        return Path("/etc/systemd/system/farmhand.service")
    return Path.home() / ".config" / "systemd" / "user" / "farmhand.service"


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def main() -> int:
    from . import client
    from .ledger import Ledger, atomic_write
    from .lock import HomeLock

    paths = resolve(system=os.environ.get("FARMHAND_SYSTEM") == "1")
    HomeLock(paths.home_lock, "deploy").acquire()
    if not systemd_running():
        print("deploy: systemd is not running on this host; the supervisor stays detached "
              "(farmhand up / farmhand down manage it)")
        return 0
    unit = unit_path(paths)
    scope = [] if paths.mode == "system" else ["--user"]
    atomic_write(unit, render_unit(paths), 0o644)
    ledger = Ledger(paths)
    ledger.add_resource("unit", unit, "deploy")
    ledger.save()
    client.down(paths)  # systemd takes over from the detached supervisor
    subprocess.run(["systemctl", *scope, "daemon-reload"], check=True)
    subprocess.run(["systemctl", *scope, "enable", "--now", "farmhand.service"], check=True)
    print(f"deploy: {unit} installed and started (systemctl {' '.join(scope)} status farmhand)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

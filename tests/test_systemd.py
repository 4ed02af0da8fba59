"""systemd integration: sd_notify messages arrive in order on a socket the test binds, and the
unit file passes `systemd-analyze verify` where that tool exists."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import pytest
from conftest import fake_spec, free_port, wait_for


def test_sd_notify_ready_status_stopping_in_order(farmhand, tmp_path):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--ready-after", "0.2")])
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    run = subprocess.Popen([sys.executable, "-m", "supervisor", "run"], env=farmhand.env | {"NOTIFY_SOCKET": str(sock_path)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages = []
    try:
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        run.send_signal(signal.SIGTERM)
        while not any(m.startswith("STOPPING=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        assert run.wait(30) == 0
    finally:
        sock.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    ready = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
    stopping = next(i for i, m in enumerate(messages) if m.startswith("STOPPING=1"))
    assert ready < stopping
    assert "STATUS=ready: svc ready" in messages[ready]
    assert any(m.startswith("STATUS=svc starting") for m in messages[:ready]) or ready == 0
    wait_for(lambda: not (farmhand.home / "state" / "supervisor.json").exists(), what="clean exit")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("FARMHAND_HOME", str(tmp_path / "home"))
    from supervisor.deploy import render_unit
    from supervisor.paths import resolve

    text = render_unit(resolve())
    assert "Type=notify" in text and "KillMode=control-group" in text and "NoNewPrivileges=yes" in text
    assert f"ReadWritePaths={tmp_path / 'home' / 'data'}" in text
    unit = tmp_path / "farmhand.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "farmhand.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr

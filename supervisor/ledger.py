"""The ledger: everything farmhand created on this host, so `destroy` removes exactly that.

One JSON file (state/ledger.json, mode 0600) written atomically under a lock. It records:
- resources: paths farmhand created (dirs, files, venvs, models), in creation order;
- artifacts: fingerprints of what steps produced (size, mtime, digest, version), so a no-op
  re-run trusts them instead of re-hashing multi-GB files;
- selection: the profile and the model each role got at the last apply (a re-run keeps them:
  stable plans, no network);
- ports: the port each runtime (and the supervisor) was assigned, so a re-run keeps them;
- config: what farmhand manages in llamafarm.yaml (file path, whether it created the file, the
  entries and the default_model it wrote).
Process identities live in the supervisor's own file (paths.processes; see process.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .paths import Paths

LEDGER_VERSION = 2


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Ledger:
    def __init__(self, paths: Paths):
        self.path = paths.ledger
        self.store_index = paths.store_index
        self.data: dict[str, Any] = {"version": LEDGER_VERSION, "resources": [], "artifacts": {},
                                     "selection": {}, "ports": {}, "config": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                from .errors import BadInput

                raise BadInput(f"{self.path}:{exc.lineno}: ledger is not valid JSON ({exc.msg})") from None
            if not isinstance(loaded, dict):
                from .errors import BadInput

                raise BadInput(f"{self.path}:1: ledger is not a JSON object")
            if loaded.get("version", 1) < LEDGER_VERSION:
                # 0.1 kept one model per profile; a 0.2 plan re-selects per role.
                loaded.pop("selection", None)
            self.data.update(loaded)
            self.data["version"] = LEDGER_VERSION
        elif self.store_index.exists():
            # After `destroy` without --purge-models only the model store is left; its index
            # lets a later apply trust those files and a later destroy purge them.
            try:
                kept = json.loads(self.store_index.read_text())
                self.data["resources"] = kept.get("resources", [])
                self.data["artifacts"] = kept.get("artifacts", {})
            except json.JSONDecodeError:
                pass

    # resources ---------------------------------------------------------------------------------
    def add_resource(self, kind: str, path: Path, step: str) -> None:
        entry = {"kind": kind, "path": str(path), "step": step}
        if not any(r["path"] == entry["path"] for r in self.data["resources"]):
            self.data["resources"].append(entry)

    def resources(self) -> list[dict]:
        return list(self.data["resources"])

    def forget_resource(self, path: Path) -> None:
        self.data["resources"] = [r for r in self.data["resources"] if r["path"] != str(path)]

    # artifacts ---------------------------------------------------------------------------------
    def artifact(self, key: str) -> dict | None:
        return self.data["artifacts"].get(key)

    def set_artifact(self, key: str, value: dict) -> None:
        self.data["artifacts"][key] = value

    def drop_artifact(self, key: str) -> None:
        self.data["artifacts"].pop(key, None)

    # choices a re-run keeps ----------------------------------------------------------------------
    def pinned_roles(self, profile: str) -> dict[str, dict]:
        """{role: {"runtime"|"remote": name, "model": name}} from the last apply of `profile`."""
        selection = self.data.get("selection") or {}
        return dict(selection.get("roles") or {}) if selection.get("profile") == profile else {}

    def pin_roles(self, profile: str, roles: dict[str, dict]) -> None:
        self.data["selection"] = {"profile": profile, "roles": roles}

    def ports(self) -> dict[str, int]:
        return dict(self.data.get("ports") or {})

    def set_ports(self, ports: dict[str, int]) -> None:
        self.data["ports"] = dict(ports)

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n", 0o600)


def ensure_dir(path: Path, ledger: Ledger, step: str) -> Path:
    """Create a directory (and parents) and record each one farmhand created."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        ledger.add_resource("dir", directory, step)
    return path


def file_fingerprint(path: Path) -> dict:
    st = Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint_matches(record: dict | None, path: Path) -> bool:
    if not record:
        return False
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return False
    return st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns")

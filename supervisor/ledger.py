"""The ledger: everything farmhand created on this host, so `destroy` removes exactly that.

One JSON file (state/ledger.json, mode 0600) written atomically. It is a write-ahead log for
resources: a path is recorded, and the ledger saved, before the path is created, so a run
killed at any point leaves nothing `destroy` does not know about. It records:
- resources: paths farmhand created or is about to create (dirs, files, venvs, models);
- artifacts: fingerprints of what steps produced (size, mtime, digest, version), so a no-op
  re-run trusts them instead of re-hashing multi-GB files;
- selection: the profile and the model each role got at the last apply (a re-run keeps them:
  stable plans, no network);
- ports: the port each runtime (and the supervisor) was assigned, so a re-run keeps them;
- projects: each llamafarm.yaml farmhand wrote (by path): whether it created the file, the
  entries and the default_model it wrote, the digest of what it wrote.
Process identities live in the supervisor's own file (paths.processes; see process.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from . import projectfs
from .errors import BadInput
from .fsio import atomic_write
from .paths import Paths

LEDGER_VERSION = 2


class Ledger:
    def __init__(self, paths: Paths, *, tolerate_damage: bool = False):
        """The ledger of `paths`. A damaged file is BadInput, or with `tolerate_damage` (the
        commands that stop and remove things) an empty ledger whose `damaged` says why."""
        self.path = paths.ledger
        self.store_index = paths.store_index
        self._lock = threading.RLock()  # steps run in parallel threads
        self.data: dict[str, Any] = {"version": LEDGER_VERSION, "resources": [], "artifacts": {},
                                     "selection": {}, "ports": {}, "projects": {}}
        self.damaged = ""  # with tolerate_damage: why the file on disk could not be read
        if self.path.exists():
            try:
                loaded = self._read(self.path)
            except BadInput as exc:
                if not tolerate_damage:
                    raise
                self.damaged = str(exc)
                return
            if loaded.get("version", 1) < LEDGER_VERSION:
                # 0.1 kept one model per profile; a 0.2 plan re-selects per role.
                loaded.pop("selection", None)
            old = loaded.pop("config", None)  # 0.1 kept one project
            if isinstance(old, dict) and old.get("path"):
                loaded.setdefault("projects", {})[old["path"]] = {k: v for k, v in old.items() if k != "path"}
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

    SHAPE = {"resources": list, "artifacts": dict, "selection": dict, "ports": dict, "asked_ports": dict,
             "projects": dict,
             "helpers": list, "runtimes": dict, "version": int}
    RECOVER = ("`farmhand down` and `farmhand destroy` still stop what they find by identity; to start over, move it "
               "aside (mv {path} {path}.damaged) and run `farmhand apply`, which re-verifies what is on disk")

    @classmethod
    def _read(cls, path: Path) -> dict:
        """The ledger's JSON, checked for its shape; BadInput saying what is wrong and how to recover."""
        recover = cls.RECOVER.format(path=path)
        try:
            loaded = json.loads(path.read_bytes().decode())
        except UnicodeDecodeError:
            raise BadInput(f"{path}:1: ledger is not UTF-8 text; {recover}") from None
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{exc.lineno}: ledger is not valid JSON ({exc.msg}); {recover}") from None
        if not isinstance(loaded, dict):
            raise BadInput(f"{path}:1: ledger is not a JSON object; {recover}")
        for key, kind in cls.SHAPE.items():
            if key in loaded and not isinstance(loaded[key], kind):
                raise BadInput(f"{path}: ledger's {key} is not a {kind.__name__}; {recover}")
        for entry in loaded.get("resources", []):
            if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("kind"), str)):
                raise BadInput(f"{path}: ledger's resources hold an entry that is not {{kind, path}}: {entry!r:.80}; "
                               f"{recover}")
        return loaded

    # resources ---------------------------------------------------------------------------------
    def add_resource(self, kind: str, path: Path, step: str) -> None:
        """Record a path, and save, before it is created (write-ahead)."""
        entry = {"kind": kind, "path": str(path), "step": step}
        with self._lock:
            for r in self.data["resources"]:
                if r["path"] == entry["path"]:
                    if r["kind"] == kind:
                        return
                    r["kind"] = kind  # a staging path that became the real thing
                    break
            else:
                self.data["resources"].append(entry)
            self.save()

    def resources(self) -> list[dict]:
        return list(self.data["resources"])

    def forget_resource(self, path: Path) -> None:
        with self._lock:
            self.data["resources"] = [r for r in self.data["resources"] if r["path"] != str(path)]

    # artifacts ---------------------------------------------------------------------------------
    def artifact(self, key: str) -> dict | None:
        return self.data["artifacts"].get(key)

    def set_artifact(self, key: str, value: dict) -> None:
        with self._lock:
            self.data["artifacts"][key] = value

    def drop_artifact(self, key: str) -> None:
        with self._lock:
            self.data["artifacts"].pop(key, None)

    # helper processes (pip, builds) of a running apply ------------------------------------------
    def add_helper(self, ident: dict) -> None:
        with self._lock:
            self.data.setdefault("helpers", []).append(ident)
            self.save()

    def forget_helper(self, ident: dict) -> None:
        with self._lock:
            self.data["helpers"] = [h for h in self.data.get("helpers", []) if h != ident]
            self.save()

    def reap_helpers(self, reap: Callable[[list[dict]], None]) -> None:
        """Hand the helper processes an interrupted apply left recorded to `reap`
        (process.reap_leftovers: the ledger itself never touches a process), then forget them. A
        crash in between leaves them listed, to be reaped again."""
        with self._lock:
            helpers = list(self.data.get("helpers", []))
        if not helpers:
            return
        reap(helpers)
        with self._lock:
            self.data["helpers"] = []
        self.save()

    # choices a re-run keeps ----------------------------------------------------------------------
    def pinned_roles(self, profile: str) -> dict[str, dict]:
        """{role: {"runtime"|"remote": name, "model": name}} from the last apply of `profile`."""
        selection = self.data.get("selection") or {}
        return dict(selection.get("roles") or {}) if selection.get("profile") == profile else {}

    def pin_roles(self, profile: str, roles: dict[str, dict]) -> None:
        self.data["selection"] = {"profile": profile, "roles": roles}

    def project(self, path: Path) -> dict:
        """The record of one llamafarm.yaml farmhand wrote (created and kept by callers)."""
        with self._lock:
            return self.data.setdefault("projects", {}).setdefault(str(path), {})

    def projects(self) -> dict[str, dict]:
        return dict(self.data.get("projects") or {})

    def runtime_record(self, name: str) -> dict | None:
        """How the last apply ran runtime `name`: {"managed": True} or {"external": URL}."""
        return (self.data.get("runtimes") or {}).get(name)

    def set_runtime_records(self, records: dict[str, dict]) -> None:
        self.data["runtimes"] = dict(records)

    def ports(self) -> dict[str, int]:
        return dict(self.data.get("ports") or {})

    def set_ports(self, ports: dict[str, int], asked: dict[str, str] | None = None) -> None:
        """The port each runtime got, and the ones a --port chose (those stay explicit)."""
        self.data["ports"] = dict(ports)
        self.data["asked_ports"] = dict(asked or {})

    def asked_ports(self) -> dict[str, str]:
        asked = self.data.get("asked_ports")
        return dict(asked) if isinstance(asked, dict) else {}

    def save(self) -> None:
        with self._lock:
            text = json.dumps(self.data, indent=1, sort_keys=True) + "\n"
            atomic_write(self.path, text, 0o600)


TEMPORARY = (".farmhand-*", "*.partial", ".*.tmp")


def sweep_temporaries(paths: Paths, projects: list[str] = ()) -> list[Path]:
    """Remove what an interrupted run left in farmhand's own directories: partial downloads,
    staging directories, pip and build temporaries, half-written files; and in the projects it
    wrote, a half-written llamafarm.yaml. Only safe while no other farmhand command runs on this
    home (callers hold the home lock)."""
    import shutil

    removed = []
    for project in projects:
        removed += projectfs.remove_temporaries(Path(project))
    # Not the state directory: the supervisor (which takes no home lock) writes there. Not a
    # wheelhouse outside the home (FARMHAND_WHEELHOUSE, shared by several homes): a build of
    # another home may be writing its temporary there now.
    own = [root.resolve() for root in paths.roots()]
    wheelhouse = [paths.wheelhouse] if any(paths.wheelhouse.resolve().is_relative_to(r) for r in own) else []
    for root in (paths.models, paths.backends, paths.downloads, *wheelhouse, paths.cache, paths.tmp):
        if not root.is_dir():
            continue
        for pattern in TEMPORARY:
            for path in [*root.glob(pattern), *root.glob(f"*/{pattern}")]:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed

"""The supervisor's state files, each read and written here and nowhere else, in typed form:

    state/supervisor.json   who the running supervisor is and where its /health listens
    state/processes.json    the identities of the runtime sessions it started
    state/runtimes.json     the runtime specs apply rendered (what the supervisor runs)
    state/deployment.json   the roles apply converged to (what `status` shows)

A reader never raises on a damaged file it can do without: a record that names nobody is no
record (the process identities are checked again before anyone is signalled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .errors import BadInput
from .fsio import atomic_write
from .identity import Identity
from .paths import Paths

if TYPE_CHECKING:
    from .specs import SupervisorSpec


def _json(path: Path):
    """The file's JSON (None when missing or not JSON text)."""
    try:
        return json.loads(Path(path).read_bytes().decode())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


class SupervisorRecord(NamedTuple):
    """The running supervisor: who it is and where its /health listens. `damaged` says why its
    record file could not be used when it was found by the lock it holds instead."""

    ident: Identity
    host: str
    port: int
    spec_digest: str = ""
    damaged: str = ""

    def to_json(self) -> dict:
        return {**self.ident.to_json(), "host": self.host, "port": self.port, "spec_digest": self.spec_digest}


def read_supervisor(paths: Paths) -> tuple[SupervisorRecord | None, str]:
    """(the record, "") or (None, why it is unusable; "" when there is none)."""
    path = paths.supervisor_address
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path} is unreadable ({exc})"
    try:
        data = json.loads(text)
        return SupervisorRecord(Identity.from_json(data), str(data["host"]), int(data["port"]),
                                str(data.get("spec_digest", ""))), ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"{path} is damaged (not the supervisor's record)"


def write_supervisor(paths: Paths, record: SupervisorRecord) -> None:
    atomic_write(paths.supervisor_address, json.dumps(record.to_json()) + "\n", 0o600)


def read_processes(paths: Paths) -> dict[str, Identity]:
    """The runtime sessions a supervisor recorded, by runtime name; damaged entries name nobody."""
    data = _json(paths.processes)
    runtimes = data.get("runtimes") if isinstance(data, dict) else None
    found = {}
    for name, record in (runtimes.items() if isinstance(runtimes, dict) else ()):
        try:
            found[str(name)] = Identity.from_json(record)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return found


def write_processes(paths: Paths, idents: dict[str, Identity]) -> None:
    atomic_write(paths.processes, json.dumps({"runtimes": {n: i.to_json() for n, i in idents.items()}}) + "\n",
                 0o600)


def read_specs(paths: Paths) -> SupervisorSpec | None:
    """The runtime specs apply rendered; None when there are none; BadInput when damaged."""
    from .specs import SupervisorSpec  # its types' set-up costs more than the record reads beside it

    data = _json(paths.runtimes)
    if data is None:
        if paths.runtimes.exists():
            raise BadInput(f"{paths.runtimes}: damaged (not JSON); run `farmhand apply` to write it again")
        return None
    try:
        return SupervisorSpec.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"{paths.runtimes}: damaged ({type(exc).__name__}: {exc}); run `farmhand apply` to write it "
                       "again") from None


def runtime_ports(paths: Paths) -> dict[str, int]:
    """The port of each runtime in the specs apply rendered, by name ({} when missing or damaged):
    what `down` waits on to be free, without the specs' types."""
    data = _json(paths.runtimes)
    ports = {}
    for runtime in (data.get("runtimes") if isinstance(data, dict) else None) or ():
        try:
            ports[str(runtime["name"])] = int(runtime["port"])
        except (KeyError, TypeError, ValueError):
            continue
    return ports


def read_specs_or_none(paths: Paths) -> SupervisorSpec | None:
    """read_specs for the commands that stop things: a damaged file is no specs."""
    try:
        return read_specs(paths)
    except BadInput:
        return None


def read_deployment(paths: Paths) -> dict:
    """What apply converged to (roles, default_role); {} when missing or damaged."""
    data = _json(paths.deployment)
    return data if isinstance(data, dict) else {}

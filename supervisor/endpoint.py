"""Asking the running supervisor over loopback HTTP: GET /health at the address its record
names, trusted only when the answer names the recorded pid. No process-table access, so
`status` (which runs this on every call) stays a record read and one request; client.py finds
the supervisor by its lock when the record is missing or damaged."""

from __future__ import annotations

import http.client
import json

from .paths import Paths
from .ports import client_host
from .statefiles import SupervisorRecord, read_supervisor


def ask(record: SupervisorRecord, timeout: float = 2.0) -> dict | None:
    """The /health body of the supervisor `record` names, or None (no answer, or another process)."""
    if not record.port:
        return None
    conn = http.client.HTTPConnection(client_host(record.host), record.port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        return body if body.get("supervisor", {}).get("pid") == record.ident.pid else None
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    finally:
        conn.close()


def health(paths: Paths, timeout: float = 2.0) -> dict | None:
    """/health by the record alone (None: no record, a damaged one, or no answer)."""
    record, _ = read_supervisor(paths)
    return ask(record, timeout) if record is not None else None


def get_json(url_host: str, port: int, path: str, timeout: float = 2.0) -> dict | None:
    """GET a JSON document from a runtime on this machine (None: no answer or not JSON)."""
    conn = http.client.HTTPConnection(client_host(url_host), port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()

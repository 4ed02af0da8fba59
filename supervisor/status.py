"""What `farmhand status` reports: the supervisor's view of its runtimes (or, when it is down,
the specs it would run) and every role of the deployment, local and remote.

It is a record read and one loopback request in the common case: the planner never loads, and
the backends load only for a role served by a server farmhand uses but does not run.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from . import client, endpoint, statefiles
from .paths import Paths
from .ports import GATEWAY as GATEWAY_RUNTIME


def status_body(paths: Paths) -> dict:
    """The supervisor's view (or the specs when it is down) plus every role, local and remote."""
    body = endpoint.health(paths)  # the common case: a record read and one request
    if body is None:
        body = client.health(paths)  # a damaged or lost record: the supervisor found by its lock
    if body is None:
        specs = statefiles.read_specs_or_none(paths)
        record = client.supervisor_record(paths)  # alive, but not answering: stopped or hung
        status, state = ("not responding", "unknown") if record else ("down", "stopped")
        body = {"status": status, "supervisor": {"pid": record["pid"]} if record else None, "runtimes": [
            {"name": r.name, "backend": r.backend, "state": state, "pid": None, "port": r.port,
             "uptime_s": 0, "restarts": 0, "last_probe_ms": None, "models": list(r.models),
             "devices": list(r.devices), "last_error": None} for r in (specs.runtimes if specs else ())]}
    _router_models(body)
    record = statefiles.read_deployment(paths)
    states = {r["name"]: r["state"] for r in body["runtimes"]}
    body["roles"], body["warnings"] = [], []
    for role in record.get("roles", []):
        entry = dict(role, default=role["role"] == record.get("default_role"))
        if role.get("gateway") and states.get(GATEWAY_RUNTIME) != "ready":  # LlamaFarm calls the gateway
            entry["state"] = f"gateway {states.get(GATEWAY_RUNTIME, 'unknown')}"
        elif role.get("gateway") and not role.get("runtime"):  # the key is the gateway's, not this shell's
            entry["state"] = "remote (through the gateway)"
        elif role.get("runtime") and role.get("managed") is False:  # a server farmhand uses, not runs
            entry["state"] = _external_state(role, body)
        elif role.get("runtime"):
            entry["state"] = states.get(role["runtime"], "unknown")
        else:
            var = role.get("api_key_env")
            entry["state"] = "remote" if not var else (f"remote ({var} set)" if os.environ.get(var)
                                                       else f"remote: {var} NOT SET")
            if var and not os.environ.get(var):
                body["warnings"].append(f"role {role['role']}: {var} is not set in this environment; LlamaFarm "
                                        f"cannot call {role['model']} without it")
        body["roles"].append(entry)
    return body


def _router_models(body: dict) -> None:
    """A router's runtime entry gains `loaded`: which of its models are in memory now (its GET /models,
    at the address the supervisor's /health gives; a runtime that is not ready is not asked)."""
    for entry in body["runtimes"]:
        url = entry.get("models_url")
        if not url or entry.get("state") != "ready":
            continue
        where = urlparse(url)
        listing = endpoint.get_json(where.hostname, where.port, where.path)
        entry["loaded"] = sorted(m["id"] for m in (listing or {}).get("data", [])
                                 if (m.get("status") or {}).get("value") == "loaded")


def _external_state(role: dict, body: dict) -> str:
    from .backends import get_backend

    backend = get_backend(role["backend"])
    version = backend.running_version(role["url"])
    if version:
        return f"ready (not farmhand's; {role['backend']} {version})"
    body["warnings"].append(f"role {role['role']}: the {role['backend']} at {role['url']} (not farmhand's) does not "
                            f"answer; start it ({backend.start_advice()})")
    if body["status"] in ("ok", "down"):
        body["status"] = "degraded"
    return "NOT ANSWERING (not farmhand's)"

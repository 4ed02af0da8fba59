"""`farmhand export`: farmhand's install as input for engines that already run fleets.

- cloud-init user-data: on first boot a oneshot unit (logging to the journal) fetches a bundle
  (or clones farmhand), runs bootstrap.py, then hands the supervisor to systemd (`deploy`).
- Kubernetes manifests: a DaemonSet on labelled GPU nodes running `farmhand run` in the
  foreground with the store on a hostPath, probes on the supervisor's /health, a Service per
  runtime. Runtimes listen beyond loopback there, so each needs its API key (a Secret).

- A Prometheus scrape config: the supervisor's GET /metrics at each target (this host's
  supervisor by default), for `prometheus --config.file` or to paste into an existing one.

All are rendered from templates/ or plain data with the plan's runtimes and ports; nothing here
talks to a cluster or a cloud.
"""

from __future__ import annotations

import re
import shlex
import sys

from . import __version__
from .backends import get_backend
from .errors import BadInput, Unsupported
from .llamafarm import template_env

SRC_DIR = "/opt/farmhand-src"
STORE = "/var/lib/farmhand"


_env = template_env


def cloud_init(*, bundle_url: str | None, bundle_sha256: str | None, repo: str, version: str,
               apply_args: list[str]) -> str:
    return _env().get_template("cloud-init.yaml.j2").render(
        bundle_url=bundle_url, bundle_sha256=bundle_sha256, repo=repo, version=version, src=SRC_DIR,
        apply_args=" ".join(shlex.quote(a) for a in apply_args), farmhand_version=__version__)


def kubernetes(*, runtimes: list[dict], supervisor_port: int, namespace: str, image: str, node_label: str,
               bundle_url: str, gpu_resources: list[str], store: str = STORE,
               key_secret: str = "farmhand-api-key") -> str:
    key, _, value = node_label.partition("=")
    return _env().get_template("kubernetes.yaml.j2").render(
        runtimes=runtimes, supervisor_port=supervisor_port, namespace=namespace, image=image,
        label_key=key, label_value=value or "true", bundle_url=bundle_url, store=store, key_secret=key_secret,
        src=SRC_DIR, farmhand_version=__version__, gpu_resources=gpu_resources)


GPU_RESOURCES = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}  # the device plugins' resource names


def check_kubernetes_args(namespace: str, image: str, node_label: str) -> None:
    """The names the manifests carry, checked before anything is planned: one line each."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace) or len(namespace) > 63:
        raise BadInput(f"--namespace {namespace}: not a Kubernetes name (lowercase letters, digits, '-')")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@{}-]*", image):
        raise BadInput(f"--image {image!r}: not an image reference (registry/name:tag or @sha256:...)")
    if not re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]*=[-A-Za-z0-9_.]*", node_label):
        raise BadInput(f"--node-label {node_label}: expected KEY=VALUE, a Kubernetes label")


def kubernetes_for_plan(plan: dict, *, namespace: str, image: str, node_label: str, bundle_url: str) -> str:
    """Manifests for a plan's runtimes (`Plan.to_json()`): a Service per runtime farmhand runs. A
    backend without an API key stays on loopback, where no Service reaches it: refused (exit 5)."""
    runtimes = []
    for rt in plan["runtimes"]:
        if not rt["managed"]:
            continue
        dns = re.sub(r"[^a-z0-9-]", "-", rt["name"].lower()).strip("-")
        keyed = get_backend(rt["backend"]).supports_api_key
        runtimes.append({"name": rt["name"], "port": rt["port"], "service": dns[:54], "port_name": dns[:15].strip("-"),
                         "key": keyed, "variant": rt.get("variant")})
    unkeyed = [r["name"] for r in runtimes if not r["key"]]
    if unkeyed:
        raise Unsupported(f"runtime(s) {', '.join(unkeyed)}: their backend has no API key, so farmhand keeps them "
                          "on loopback, and a Service could not reach them; choose a profile with llama-server or "
                          "vLLM for Kubernetes")
    resources = sorted({GPU_RESOURCES[r["variant"]] for r in runtimes if r["variant"] in GPU_RESOURCES})
    return kubernetes(runtimes=runtimes, supervisor_port=plan["supervisor_port"], namespace=namespace,
                      image=image.format(py=f"{sys.version_info[0]}.{sys.version_info[1]}"), node_label=node_label,
                      bundle_url=bundle_url, gpu_resources=resources)


DURATION = re.compile(r"^([0-9]+)(ms|s|m|h)$")
TARGET = re.compile(r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$")


def prometheus(targets: list[str], *, interval: str = "15s", job: str = "farmhand") -> str:
    """A prometheus.yml whose one job scrapes farmhand's supervisor at each HOST:PORT target."""
    import yaml

    bad = [t for t in targets if not TARGET.match(t) or not 0 < int(t.rsplit(":", 1)[1]) < 65536]
    if bad:
        raise BadInput(f"--target {bad[0]!r}: expected HOST:PORT (the supervisor's address, e.g. 127.0.0.1:11545)")
    if not DURATION.match(interval):
        raise BadInput(f"--interval {interval!r}: expected a Prometheus duration such as 15s, 1m")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", job):
        raise BadInput(f"--job {job!r}: letters, digits, _ and - only")
    seconds = _duration_s(interval)
    if seconds <= 0:
        raise BadInput(f"--interval {interval!r}: must be more than 0")
    # Prometheus refuses a timeout longer than the interval: 5 s, or the interval when shorter.
    doc = {"scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "scrape_interval": interval,
                               "scrape_timeout": interval if seconds < 5 else "5s",
                               "static_configs": [{"targets": targets}]}]}
    return ("# Written by `farmhand export prometheus`: scrape farmhand's supervisor (GET /metrics).\n"
            + yaml.safe_dump(doc, sort_keys=False))


def _duration_s(text: str) -> float:
    number, unit = DURATION.match(text).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]

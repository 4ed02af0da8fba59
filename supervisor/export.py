"""`farmhand export`: farmhand's install as input for engines that already run fleets.

- cloud-init user-data: on first boot a oneshot unit (logging to the journal) fetches a bundle
  (or clones farmhand), runs bootstrap.py, then hands the supervisor to systemd (`deploy`).
- Kubernetes manifests: a DaemonSet on labelled GPU nodes running `farmhand run` in the
  foreground with the store on a hostPath, probes on the supervisor's /health, a Service per
  runtime. Runtimes listen beyond loopback there, so each needs its API key (a Secret).

Both are rendered from templates/ with the plan's runtimes and ports; nothing here talks to a
cluster or a cloud.
"""

from __future__ import annotations

import shlex

from . import __version__
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

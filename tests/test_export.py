"""`farmhand export`: cloud-init user-data checked by Debian's own `cloud-init schema` (and its
script and unit by sh and systemd-analyze), Kubernetes manifests by kubernetes-validate's schemas
(strict), with a broken document as a control that each validator really rejects. No cloud and
no cluster run here; the ConfigMap's overrides are fed to a real `farmhand plan`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import FIXTURES

CLOUD_INIT = shutil.which("cloud-init")
SHA = "a" * 64


def farmhand(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def cloud_init_schema(path) -> subprocess.CompletedProcess:
    return subprocess.run([CLOUD_INIT, "schema", "--config-file", str(path)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(CLOUD_INIT is None, reason="cloud-init is not installed (Debian: apt-get install cloud-init)")
@pytest.mark.parametrize("args", [
    ["--bundle-url", "https://mirror.example/farmhand-bundle.tar", "--bundle-sha256", SHA],
    ["--repo", "https://git.example/farmhand.git", "--version", "v0.2", "--", "--profile", "cpu-small"],
], ids=["bundle", "clone"])
def test_cloud_init_user_data_is_valid_and_runs_bootstrap_as_a_journald_unit(args, tmp_path):
    proc = farmhand("export", "cloud-init", *args)
    assert proc.returncode == 0, proc.stderr
    user_data = tmp_path / "user-data"
    user_data.write_text(proc.stdout)
    check = cloud_init_schema(user_data)
    assert check.returncode == 0 and "Valid cloud-config" in check.stdout, check.stdout + check.stderr

    doc = yaml.safe_load(proc.stdout)
    files = {f["path"]: f for f in doc["write_files"]}
    script = files["/usr/local/sbin/farmhand-bootstrap"]["content"]
    unit = files["/etc/systemd/system/farmhand-bootstrap.service"]["content"]
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "StandardOutput=journal" in unit and "Type=oneshot" in unit and "ExecStart=/usr/local/sbin/farmhand-bootstrap" in unit
    assert "bootstrap.py" in script and "-m supervisor.deploy" in script
    if "--bundle-url" in args:
        assert f'echo "{SHA}  /opt/farmhand-src/farmhand-bundle.tar" | sha256sum -c -' in script
        assert "--bundle /opt/farmhand-src/farmhand-bundle.tar" in script and "build-essential" not in doc["packages"]
    else:
        assert "git clone --depth 1 --branch v0.2 https://git.example/farmhand.git" in script
        assert "--profile cpu-small" in script
    assert ["systemctl", "enable", "farmhand-bootstrap.service"] in doc["runcmd"]
    if shutil.which("systemd-analyze"):
        unit_file = tmp_path / "farmhand-bootstrap.service"
        unit_file.write_text(unit.replace("/usr/local/sbin/farmhand-bootstrap", "/bin/true"))
        verify = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True)
        assert not [ln for ln in (verify.stdout + verify.stderr).splitlines() if "farmhand-bootstrap" in ln], \
            verify.stdout + verify.stderr

    broken = tmp_path / "broken"
    broken.write_text(proc.stdout.replace("package_update: true", "package_update: 5"))
    assert cloud_init_schema(broken).returncode != 0, "the control: cloud-init schema must reject a wrong type"


@pytest.mark.parametrize("args,message", [
    (["--bundle-url", "ftp://x/y"], "expected an https:// URL"),
    (["--bundle-url", "https://x/y;$(reboot)"], "not allowed in the URL"),
    (["--bundle-url", "https://x/y", "--bundle-sha256", "abc"], "64 lowercase hex"),
])
def test_cloud_init_refuses_bad_values_in_one_line(args, message):
    proc = farmhand("export", "cloud-init", *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_kubernetes_manifests_validate_strictly_and_wire_probes_services_and_store(tmp_path):
    import kubernetes_validate

    proc = farmhand("export", "kubernetes", "--bundle-url", "https://mirror.example/farmhand-bundle.tar",
                    "--replay", str(FIXTURES / "hosts" / "h100-firecracker-real"), "--profile", "nvidia-large")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    kinds = [d["kind"] for d in docs]
    assert kinds[:3] == ["Namespace", "ConfigMap", "DaemonSet"] and set(kinds[3:]) == {"Service"}
    ds = docs[2]["spec"]["template"]["spec"]
    assert ds["nodeSelector"] == {"farmhand.io/serve": "true"}
    (container,) = ds["containers"]
    assert container["args"][0].rstrip().endswith("exec /opt/farmhand-src/.venv/bin/python -m supervisor run")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "/health" in " ".join(container[probe]["exec"]["command"]), probe
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    store = next(v for v in ds["volumes"] if v["name"] == "store")
    assert store["hostPath"]["path"] == "/var/lib/farmhand"
    services = [d for d in docs if d["kind"] == "Service"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for svc in services:
        (port,) = svc["spec"]["ports"]
        assert ports[port["targetPort"]] == port["port"]

    # The overrides the pods apply are real farmhand overrides: a plan accepts them (with the key set).
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(docs[1]["data"]["overrides.yaml"])
    env = os.environ | {"FARMHAND_HOME": str(tmp_path / "home"), "FARMHAND_API_KEY": "k"}
    plan = farmhand("plan", "--json", "--overrides", str(overrides), "--profile", "nvidia-large", "--replay",
                    str(FIXTURES / "hosts" / "h100-firecracker-real"), env=env)
    assert plan.returncode == 0, plan.stderr

    # The control: the validator rejects what the API server would.
    broken = dict(docs[2])
    broken["spec"] = dict(broken["spec"], selector="app")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_kubernetes_refuses_runtimes_that_cannot_be_keyed():
    proc = farmhand("export", "kubernetes", "--bundle-url", "https://m.example/b.tar", "--replay",
                    str(FIXTURES / "hosts" / "strix-apu-npu"), "--profile", "amd-npu")
    assert proc.returncode == 5 and "no API key" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, says", [
    (["--namespace", "Farm Hand"], "--namespace Farm Hand: not a Kubernetes name"),
    (["--node-label", "gpu"], "--node-label gpu: expected KEY=VALUE"),
    (["--image", "python:3.11\n  privileged: true"], "not an image reference"),
    (["--bundle-url", "https://m.example/b.tar'; rm -rf /"], "not allowed in the URL"),
])
def test_kubernetes_refuses_values_that_would_bend_the_manifest(args, says):
    base = {"--bundle-url": "https://m.example/b.tar"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    proc = farmhand("export", "kubernetes", *[x for kv in base.items() for x in kv], "--profile", "cpu-small")
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

"""The Ansible role, run for real with ansible-core against an inventory of two hosts on this
machine (each its own FARMHAND_HOME, ports, source dir and facts dir; ansible_connection=local),
installing from the offline bundle: the first run is `changed` and both hosts serve the real
Gemma; the second run and a --check run are `changed=0`; the published local facts group hosts by
CPU level; `farmhand_state=absent` leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from checks import assert_real_gemma_answers, listening_ports
from conftest import REPO, free_port, home_processes

pytestmark = pytest.mark.e2e
PLAYBOOK = REPO / "docs" / "examples" / "farmhand-playbook.yml"
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"


def run_playbook(tmp_path: Path, inventory: Path, *extra: str) -> dict:
    config = tmp_path / "ansible.cfg"  # none of the machine's or the user's Ansible configuration
    config.write_text("[defaults]\n")
    env = os.environ | {
        "ANSIBLE_ROLES_PATH": str(REPO / "ansible" / "roles"), "ANSIBLE_STDOUT_CALLBACK": "farmhand_json",
        "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "tests" / "ansible_plugins"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0", "ANSIBLE_CONFIG": str(config)}
    for var in ("FARMHAND_HOME", "FARMHAND_WHEELHOUSE", "NOTIFY_SOCKET"):
        env.pop(var, None)
    proc = subprocess.run([str(ANSIBLE), "-i", str(inventory), str(PLAYBOOK), *extra], env=env, capture_output=True,
                          text=True, timeout=900)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ansible-playbook printed no JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}") from None
    stats = result["stats"]
    failed = {h: s for h, s in stats.items() if s["failures"] or s["unreachable"]}
    if failed or proc.returncode != 0:
        tasks = [(t["task"]["name"], h, r.get("msg"), r.get("stderr", "")[-1500:]) for play in result["plays"]
                 for t in play["tasks"] for h, r in t["hosts"].items() if r.get("failed")]
        raise AssertionError(f"ansible-playbook failed (exit {proc.returncode}): {failed}\n{tasks}")
    return result


def changed_tasks(result: dict, host: str) -> list[str]:
    return [t["task"]["name"].split(" : ", 1)[-1] for play in result["plays"] for t in play["tasks"]
            if t["hosts"].get(host, {}).get("changed")]


@pytest.mark.skipif(not ANSIBLE.exists(), reason="ansible-core is not installed (pip install '.[dev]')")
def test_the_role_converges_two_hosts_honestly_and_absent_leaves_nothing(offline_bundle, tmp_path):
    hosts = {}
    for name in ("lab-a", "lab-b"):
        root = tmp_path / name
        hosts[name] = {
            "farmhand_home": str(root / "home"), "farmhand_dir": str(root / "src"),
            "farmhand_project_dir": str(root / "project"), "farmhand_facts_dir": str(root / "facts.d"),
            "farmhand_apply_args": ["--port", str(free_port())],
            "farmhand_overrides": {"supervisor": {"port": 0}},
        }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "farmhand_python": sys.executable, "farmhand_bundle": str(offline_bundle)}}}))
    ports_before = listening_ports()
    try:
        first = run_playbook(tmp_path, inventory)
        for name, h in hosts.items():
            assert first["stats"][name]["changed"] > 0
            assert "Converge (bootstrap.py --json; changed is farmhand's own verdict)" in changed_tasks(first, name)
            assert_real_gemma_answers(f"http://127.0.0.1:{h['farmhand_apply_args'][1]}/v1", "gemma3-270m")
            fact = json.loads((Path(h["farmhand_facts_dir"]) / "farmhand.fact").read_text())
            assert fact["cpu"]["level"] and "probes" not in fact
        # the example playbook groups hosts by the published facts
        groups = [t for play in first["plays"] for t in play["tasks"] if t["task"]["name"].startswith("Group hosts")]
        assert groups and all(r.get("add_group", "").startswith("farmhand_cpu_") for t in groups
                              for r in t["hosts"].values()), groups

        second = run_playbook(tmp_path, inventory)
        for name in hosts:
            assert second["stats"][name]["changed"] == 0, changed_tasks(second, name)

        check = run_playbook(tmp_path, inventory, "--check")
        for name in hosts:
            assert check["stats"][name]["changed"] == 0, changed_tasks(check, name)
        # --check on a host with pending changes says so (plan --detailed-exitcode exits 10)
        Path(hosts["lab-a"]["farmhand_project_dir"], "llamafarm.yaml").unlink()
        pending = run_playbook(tmp_path, inventory, "--check", "--limit", "lab-a")
        assert "Plan (check mode; exit 10 means changes are pending)" in changed_tasks(pending, "lab-a")
        assert not Path(hosts["lab-a"]["farmhand_project_dir"], "llamafarm.yaml").exists(), "--check changed the host"

        gone = run_playbook(tmp_path, inventory, "-e", "farmhand_state=absent")
        for name in hosts:
            assert gone["stats"][name]["changed"] > 0
    finally:
        leftovers = [p for h in hosts.values() for p in home_processes(Path(h["farmhand_home"]))]
        for p in leftovers:
            p.kill()
    assert not leftovers, [p.cmdline() for p in leftovers]
    for h in hosts.values():
        home = Path(h["farmhand_home"])
        assert not home.exists() or not any(home.rglob("*")), list(home.rglob("*"))
        assert not Path(h["farmhand_dir"]).exists()
        assert not (Path(h["farmhand_facts_dir"]) / "farmhand.fact").exists()
        assert not (Path(h["farmhand_project_dir"]) / "llamafarm.yaml").exists()
    assert listening_ports() <= ports_before | {0}, listening_ports() - ports_before
    shutil.rmtree(tmp_path / "ansible-home", ignore_errors=True)

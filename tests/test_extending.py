"""README's "Add a backend" walkthrough is true: a copy of the package with nothing but the
walkthrough's backend file and its registry line plans a runtime of the new backend, and no
other file of the package had to change; and each registry line loads its plugin, when asked."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO
from planning import host

BLOCK = re.compile(r"<!-- walkthrough: (\S+) -->\n```python\n(.*?)```", re.S)


def _walkthrough() -> dict[str, str]:
    blocks = dict(BLOCK.findall((REPO / "README.md").read_text()))
    assert set(blocks) == {"supervisor/backends/llamafile.py", "supervisor/backends/__init__.py"}, (
        f"README's walkthrough blocks changed: {sorted(blocks)}")
    return blocks


def _changed(a, b) -> list[str]:
    """Files that differ or exist on one side only, relative to the package root."""
    out = []

    def walk(cmp: filecmp.dircmp, prefix: str) -> None:
        out.extend(prefix + n for n in cmp.diff_files + cmp.left_only + cmp.right_only if n != "__pycache__")
        for name, sub in cmp.subdirs.items():
            if name != "__pycache__":
                walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b, ignore=["__pycache__"]), "")
    return sorted(out)


def test_a_backend_is_one_file_and_a_registry_line(tmp_path):
    blocks = _walkthrough()
    copy = tmp_path / "farmhand"
    for part in ("supervisor", "profiles", "templates"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "supervisor/backends/llamafile.py").write_text(blocks["supervisor/backends/llamafile.py"])
    registry = copy / "supervisor/backends/__init__.py"
    (registry_line,) = blocks["supervisor/backends/__init__.py"].strip().splitlines()
    text = registry.read_text()
    listing = re.search(r"^REGISTERED: dict\[str, str\] = \{\n(?:    .*\n)+\}\n", text, flags=re.M)
    assert listing, "the registry the walkthrough adds a line to moved"
    text = text[:listing.end() - 2] + f"    {registry_line}\n" + text[listing.end() - 2:]
    registry.write_text(text)

    assert _changed(REPO / "supervisor", copy / "supervisor") == ["backends/__init__.py", "backends/llamafile.py"]
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(host(16, tools={"llamafile": "/usr/local/bin/llamafile"})))
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("deployment:\n  runtimes:\n    llamafile: {backend: llamafile}\n"
                         "  roles:\n    default:\n      use: [{model: gemma3-270m, runtime: llamafile}]\n")
    proc = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--profile", "cpu-small", "--facts", str(facts),
                           "--overrides", str(overrides), "--json"], cwd=copy, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(copy), "FARMHAND_HOME": str(tmp_path / "home")},
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"plan with the walkthrough's backend failed: {proc.stderr}"
    plan = json.loads(proc.stdout)
    default = next(r for r in plan["roles"] if r["role"] == plan["default_role"])
    assert default["backend"] == "llamafile", f"the default role is served by {default['backend']}"
    runtime = next(rt for rt in plan["runtimes"] if rt["name"] == "llamafile")
    argv = runtime["argv"]
    assert argv[0].rsplit("/", 1)[-1] == "llamafile" and "--server" in argv, f"argv: {argv}"
    assert argv[argv.index("--port") + 1] == "11570" and argv[argv.index("--host") + 1] == "127.0.0.1", argv
    assert argv[argv.index("-m") + 1].endswith("gemma-3-270m-q4_k_m.gguf"), argv
    assert runtime["url"] == "http://127.0.0.1:11570/v1"


@pytest.mark.parametrize("registry", ["backends", "installers"])
def test_every_registry_line_names_its_class(registry):
    from supervisor.backends import BACKENDS
    from supervisor.installers import INSTALLERS

    plugins, attr = {"backends": (BACKENDS, "name"), "installers": (INSTALLERS, "method")}[registry]
    wrong = {name: getattr(plugins[name], attr) for name in plugins if getattr(plugins[name], attr) != name}
    assert not wrong, f"{registry}: listed under one name, called another: {wrong}"


def test_a_plugin_module_loads_when_its_name_is_first_asked_for():
    probe = ("import sys; from supervisor.backends import BACKENDS, get_backend; "
             "listed = 'vllm' in BACKENDS and 'vllm' in list(BACKENDS); "
             "before = 'supervisor.backends.vllm' in sys.modules; get_backend('vllm'); "
             "print(listed, before, 'supervisor.backends.vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"], (
        f"(listed, loaded before the lookup, loaded after): {out.stdout.strip()}")

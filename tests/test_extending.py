"""README's "Add a backend" walkthrough is true: a copy of the package with nothing but the
walkthrough's backend file and its two registry lines plans a runtime of the new backend, and
no other file of the package had to change."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys

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
    import_line, backends_line = blocks["supervisor/backends/__init__.py"].strip().splitlines()
    text = registry.read_text()
    assert text.count("\nREGISTERED = (") == 1, "the registry line the walkthrough replaces moved"
    text = re.sub(r"^REGISTERED = \(.*$", backends_line, text, count=1, flags=re.M)
    text = text.replace("from .vllm import Vllm\n", f"from .vllm import Vllm\n{import_line}\n")
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

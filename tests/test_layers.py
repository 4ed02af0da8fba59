"""The package's shape: every module sits in one layer, and imports only from its own layer or
the ones below it, with no circle anywhere. Read from the AST of every module (imports inside
functions and under TYPE_CHECKING count too). An import inside a function is allowed only where
ALLOWED_LOCAL says why; it is never a way around a circle.

docs/architecture.md draws these layers; a new module is added to LAYERS below, in the lowest
layer whose modules are all it needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "supervisor"

# Lowest first. `runtime` needs nothing but `core`: the supervisor never loads the planner.
LAYERS: list[tuple[str, set[str]]] = [
    ("core", {"supervisor", "errors", "paths", "cpulevel", "policy", "states", "notify", "progress", "projectfs",
              "process", "fsio", "memo", "yamlio", "gguf", "runlog", "health", "lock", "specs", "ports", "refs",
              "stepids", "statefiles", "identity", "readiness", "shm", "observed", "registry"}),
    ("runtime", {"daemon", "client", "endpoint", "metrics", "watch"}),
    ("facts", {"facts", "facts.hostio", "facts.parsers", "facts.probes"}),
    ("world", {"fetcher", "extract", "sources", "sources.base", "sources.file", "sources.hf", "sources.http",
               "sources.lemonade", "sources.ollama", "sources.pip", "bundle", "installers", "installers.base",
               "installers.archive", "installers.external", "installers.path", "installers.pip", "store",
               "deployment", "memory"}),
    ("backends", {"backends", "backends.base", "backends.lemonade", "backends.llama_server", "backends.ollama",
                  "backends.ollama_api", "backends.vllm", "backends.litellm",
                  "backends.llamacpp_build", "backends.llama_cpp_python"}),
    ("decide", {"declare", "selection", "profiles"}),
    ("converge", {"ledger", "llamafarm", "portowners", "render", "steps", "steps.base", "steps.installs",
                  "steps.models", "steps.files", "steps.runtime", "plan", "oracle", "engine", "status"}),
    ("ship", {"bundle_create", "export", "deploy", "destroy"}),
    ("cli", {"cli", "cli.common", "cli.host", "cli.converge", "cli.runtimes", "cli.models", "cli.ship", "cli_checks",
             "__main__"}),
]

# module -> why its function-local imports of farmhand modules are not cycle dodges.
_COMMANDS = ("each command imports what it runs when it runs: `status`, `up` and `down` never load the planner, "
             "and import time is most of a no-op's latency (bench/)")
ALLOWED_LOCAL = {
    **dict.fromkeys(("cli", "cli.common", "cli.host", "cli.converge", "cli.runtimes", "cli.models", "cli.ship"),
                    _COMMANDS),
    "daemon": "prometheus-client (metrics) is imported at the first scrape of /metrics: ~30 ms of every start "
              "otherwise (bench/revisions.py up_fake)",
    "client": "psutil (process) loads only when a record or a lock holder needs checking: an `up` that finds "
              "nothing running reads two files and /proc/locks, ~25 ms less (bench/revisions.py up_fake)",
    "status": "the common case is a record read and one request: the backends load only for a server farmhand "
              "uses but does not run (bench/)",
    "statefiles": "the runtime specs' types (specs, policy: three frozen dataclasses, most of a `status`'s own "
                  "instructions) load only for a command that reads the whole runtimes.json; `status` on a running "
                  "supervisor and `down` read the record, processes.json and the ports (bench/revisions.py)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    name = ".".join(parts[1:])
    name = name.removesuffix(".__init__").removesuffix("__init__")
    return name or "supervisor"


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The farmhand modules an import statement loads (by the names used in LAYERS)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        found = []
        for name in names:
            if name == "supervisor" or name.startswith("supervisor."):
                found.append(name.removeprefix("supervisor.") if name != "supervisor" else "supervisor")
        return [f for f in found if f in MODULES]
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" and module != "supervisor" else (
            module.split(".")[:-1] if module != "supervisor" else [])
        package = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join(package + ([node.module] if node.module else []))
    elif node.module and (node.module == "supervisor" or node.module.startswith("supervisor.")):
        base = node.module.removeprefix("supervisor").lstrip(".")
    else:
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        out.append(sub if sub in MODULES else (base or "supervisor"))
    return [t for t in out if t in MODULES]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(target, line, inside a function) for every farmhand import of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, node):
                if target != module and not module.startswith(target + "."):
                    found.append((target, node.lineno, id(node) in local))
    return found


def test_every_module_has_a_layer():
    missing = sorted(set(MODULES) - set(LAYER_OF))
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"
    stale = sorted(set(LAYER_OF) - set(MODULES))
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_only(module):
    upward = []
    for target, line, _ in _imports(module):
        if target in LAYER_OF and module in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]:
            upward.append(f"{MODULES[module].relative_to(REPO)}:{line}: {module} ({LAYERS[LAYER_OF[module]][0]}) "
                          f"imports {target} ({LAYERS[LAYER_OF[target]][0]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_local_import_of_farmhand_modules(module):
    if module in ALLOWED_LOCAL:
        return
    local = [f"{MODULES[module].relative_to(REPO)}:{line}: imports {target} inside a function"
             for target, line, inside in _imports(module) if inside]
    assert not local, ("import at the top of the module (a circle is fixed by moving code down a layer, "
                       "not by a local import):\n" + "\n".join(local))


def test_no_import_circle():
    edges = {m: {t for t, _, _ in _imports(m)} for m in MODULES}
    seen: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        seen[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in seen and (cycle := visit(nxt)):
                return cycle
        seen[node] = 2
        path.pop()
        return None

    for module in sorted(MODULES):
        if module not in seen and (cycle := visit(module)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_checker_sees_what_it_must():
    """The rules above would pass vacuously if the walker found no imports: pin a few it must see."""
    assert ("errors", ) == tuple(t for t, _, _ in _imports("projectfs"))
    assert any(t == "selection" for t, _, _ in _imports("plan"))
    assert any(inside for _, _, inside in _imports("cli"))
    assert "backends.base" in {t for t, _, _ in _imports("backends.vllm")}

"""llamafarm.yaml: rendered from templates/ with jinja2, merged into the user's file, validated
against LlamaFarm's schema, written atomically with a timestamped backup of the old file
(the last projectfs.BACKUPS_KEPT are kept; projectfs says how a project dir is written safely).

farmhand owns the runtime.models entries it wrote (one per role, remembered by name in the
ledger) and runtime.default_model while it holds the value farmhand wrote. A default_model the
user set to an entry that exists is theirs and stays. Everything else a user wrote, comments
included (ruamel.yaml round-trip), survives every run.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from urllib.parse import urlparse

from . import __version__, memo, projectfs, yamlio
from .errors import BadInput
from .refs import env_refs

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FILENAME = "llamafarm.yaml"


def render(entries: list[dict], default_model: str, profile: str, project_dir: Path) -> str:
    """llamafarm.yaml text for farmhand's entries. Values are written as JSON (valid YAML),
    so any field LlamaFarm accepts on a model (prompts, model_api_parameters, tools...) passes
    through unchanged."""

    template = (TEMPLATES / "llamafarm.yaml.j2").read_text()
    key = memo.digest(template, entries, default_model, profile, str(project_dir.resolve()), __version__)
    return memo.remember("render", key, lambda: _render(entries, default_model, profile, project_dir))


def template_env():
    """The one Jinja environment for templates/: strict (a missing variable is an error, never an
    empty string), newlines kept, no HTML escaping (YAML and unit files); `q` shell-quotes."""
    import shlex

    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)  # noqa: S701 - YAML and units, not HTML
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def _render(entries: list[dict], default_model: str, profile: str, project_dir: Path) -> str:
    env = template_env()
    name = re.sub(r"[^a-z0-9_-]+", "-", project_dir.resolve().name.lower()).strip("-") or "llamafarm"
    return env.get_template("llamafarm.yaml.j2").render(
        farmhand_version=__version__, profile=profile, name=name, namespace="default",
        default_model=default_model, entries=entries,
    )


def merged(existing: dict, desired: dict, previously_managed: set[str], written_default: str | None = None) -> dict:
    """The user's document with farmhand's runtime entries brought up to date (plain dicts).

    `written_default` is the default_model farmhand wrote last time: a different value that
    names an existing entry was set by the user and is kept."""
    doc = copy.deepcopy(existing)
    for key in ("version", "name", "namespace"):
        doc.setdefault(key, desired[key])
    runtime = doc.get("runtime") or {}
    doc["runtime"] = runtime
    wanted = {m["name"]: m for m in desired["runtime"]["models"]}
    managed = previously_managed | set(wanted)
    result, placed = [], set()
    for entry in runtime.get("models") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name in wanted:
            result.append(wanted[name])
            placed.add(name)
        elif name not in managed:
            result.append(entry)
    result += [m for n, m in wanted.items() if n not in placed]
    names = {m.get("name") for m in result if isinstance(m, dict)}
    current = runtime.get("default_model")
    users_choice = current is not None and current != written_default and current in names
    if wanted and not users_choice:
        runtime["default_model"] = desired["runtime"]["default_model"]
    elif not wanted and current is not None and (current == written_default or current not in names):
        runtime.pop("default_model", None)
    final = runtime.get("default_model")
    result = [dict(m, default=m["name"] == final) if isinstance(m, dict) and m.get("name") in wanted else m
              for m in result]
    runtime["models"] = result
    return doc


def reference_warnings(entries: list[dict], existing: dict | None, path: Path) -> list[str]:
    """Roles naming prompt sets or MCP servers that the project's llamafarm.yaml does not
    define (those sections are the user's; LlamaFarm would fail on the dangling name)."""
    doc = existing or {}
    prompts = {p.get("name") for p in doc.get("prompts") or [] if isinstance(p, dict)}
    mcp = doc.get("mcp") if isinstance(doc.get("mcp"), dict) else {}
    servers = {s.get("name") for s in mcp.get("servers") or [] if isinstance(s, dict)}
    out = []
    for entry in entries:
        for name in entry.get("prompts") or []:
            if name not in prompts:
                out.append(f"role {entry['name']}: prompt set {name!r} is not defined in {path} (add it under prompts:)")
        for name in entry.get("mcp_servers") or []:
            if name not in servers:
                out.append(f"role {entry['name']}: MCP server {name!r} is not defined in {path} (add it under "
                           "mcp.servers:)")
    return out


def validate(doc: dict, source: str) -> None:
    yamlio.validate(doc, "llamafarm", f"{source} (LlamaFarm schema)")


# How each provider's client is given base_url by LlamaFarm 0.0.34 (unchanged): the path it must
# end with ("": a server root, no path).
BASE_URL_PATH = {"openai": "/v1", "lemonade": "/api/v1", "ollama": ""}


def problems(doc: dict) -> list[str]:
    """What LlamaFarm 0.0.34 accepts without a word and then gets wrong: a model name used twice
    (the later one is unreachable), a default_model naming no model (only runtime.default_model
    chooses the default; `default: true` is ignored), a prompt set that is not defined, and a
    base_url its provider's client cannot use (the OpenAI client appends /chat/completions to it)."""
    runtime = doc.get("runtime") if isinstance(doc.get("runtime"), dict) else {}
    models = [m for m in runtime.get("models") or [] if isinstance(m, dict)]
    names = [m.get("name") for m in models]
    out = [f"runtime.models: the name {n!r} is used {names.count(n)} times; LlamaFarm reaches only one of them"
           for n in dict.fromkeys(names) if names.count(n) > 1]
    default = runtime.get("default_model")
    if default is not None and default not in names:
        out.append(f"runtime.default_model {default!r} names no model; models: {', '.join(map(str, names)) or 'none'}")
    prompts = {p.get("name") for p in doc.get("prompts") or [] if isinstance(p, dict)}
    for m in models:
        for name in m.get("prompts") or []:
            if name not in prompts:
                out.append(f"model {m.get('name')}: prompt set {name!r} is not defined under prompts:")
        want = BASE_URL_PATH.get(str(m.get("provider")))
        url = m.get("base_url")
        if want is None or not isinstance(url, str):
            continue
        path = urlparse(url).path.rstrip("/")
        if path != want and not (want and path.endswith(want)):
            shape = f"end in {want}" if want else "be the server's root (no path)"
            out.append(f"model {m.get('name')}: base_url {url} must {shape} for provider {m.get('provider')} "
                       "(LlamaFarm passes it to the client unchanged)")
    return out


def literal_key_warnings(entries: list[dict]) -> list[str]:
    """LlamaFarm 0.0.34 does not resolve `${env:VAR}` in api_key: it sends the text itself as the
    Bearer token. farmhand never writes a key's value, so such a model does not authenticate."""
    out = []
    for entry in entries:
        var = env_refs(str(entry.get("api_key") or ""))
        if var:
            out.append(f"role {entry['name']}: LlamaFarm 0.0.34 sends api_key {entry['api_key']} literally (it does "
                       f"not resolve ${{env:...}}), so {entry['model']} will not authenticate; put a gateway that "
                       f"holds ${var[0]} in front of it (its base_url in this role), or use a LlamaFarm release "
                       "that resolves the reference")
    return out


def load_existing(path: Path) -> dict | None:
    if not path.exists():
        return None
    doc = yamlio.load_file(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}:1: expected a mapping at the top level, found {type(doc).__name__}")
    _check_shape(doc, path)
    return doc


def _check_shape(doc: dict, path: Path) -> None:
    """The parts farmhand merges into must have the shape LlamaFarm gives them."""
    runtime = doc.get("runtime")
    wrong = None
    if runtime is not None and not isinstance(runtime, dict):
        wrong = ("runtime", "a mapping", runtime)
    elif isinstance(runtime, dict):
        models, default = runtime.get("models"), runtime.get("default_model")
        if models is not None and not (isinstance(models, list) and all(isinstance(m, dict) for m in models)):
            wrong = ("runtime.models", "a list of mappings", models)
        elif default is not None and not isinstance(default, str):
            wrong = ("runtime.default_model", "a model name", default)
    if wrong:
        key, want, got = wrong
        line = yamlio.key_line(path, key.split("."))
        raise BadInput(f"{path}:{line}: {key} must be {want}, not {got!r}; fix it and re-run (nothing was changed)")


def write_merged(path: Path, desired_text: str, previously_managed: set[str],
                 written_default: str | None = None, *, teardown: bool = False) -> Path | None:
    """Write the merged document; returns the backup path when an old file was replaced. With
    `teardown` (destroy: farmhand's entries out) no backup is made, a runtime section left with
    nothing in it goes, and farmhand's earlier backups of the file are removed."""
    desired = yamlio.load_text(desired_text, "template llamafarm.yaml.j2")
    projectfs.check_file(path)  # a link or another user's file is refused before it is read
    existing = load_existing(path)
    if existing is None:
        validate(desired, str(path))
        projectfs.write_config(path, desired_text, backup=False)
        return None
    plain = merged(existing, desired, previously_managed, written_default)
    validate(plain, str(path))
    text = _round_trip(path, desired, previously_managed, written_default, drop_empty_runtime=teardown)
    backup = projectfs.write_config(path, text, backup=not teardown)
    if teardown:
        projectfs.prune_backups(path, keep=0)
    return backup


def _round_trip(path: Path, desired: dict, previously_managed: set[str], written_default: str | None,
                drop_empty_runtime: bool = False) -> str:
    """Apply the same merge through ruamel.yaml so the user's comments and order survive."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(path.read_text()) or {}
    plain = merged(_plain(doc), desired, previously_managed, written_default)
    for key in ("version", "name", "namespace"):
        if key not in doc:
            doc[key] = plain[key]
    runtime = doc.get("runtime")
    if runtime is None:
        doc["runtime"] = runtime = {}
    old = list(runtime.get("models") or [])
    keep = {id(e) for e in old if isinstance(e, dict) and e.get("name") not in
            previously_managed | {m["name"] for m in desired["runtime"]["models"]}}
    new_models = []
    for entry in plain["runtime"]["models"]:
        match = next((e for e in old if id(e) in keep and e.get("name") == entry.get("name")), None)
        new_models.append(match if match is not None else entry)
    runtime["models"] = new_models
    if "default_model" in plain["runtime"]:
        runtime["default_model"] = plain["runtime"]["default_model"]
    else:
        runtime.pop("default_model", None)
    if drop_empty_runtime and not new_models and set(runtime) <= {"models"}:
        del doc["runtime"]  # farmhand added it; the user's file had nothing there
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _plain(node):
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node

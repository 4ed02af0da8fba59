"""llamafarm.yaml: rendered from templates/ with jinja2, merged into the user's file, validated
against LlamaFarm's schema, written atomically with a timestamped backup of the old file.

farmhand owns the runtime.models entries it wrote (remembered by name in the ledger) and
runtime.default_model while it points at one of them. Everything else a user wrote, comments
included (ruamel.yaml round-trip), survives every run.
"""

from __future__ import annotations

import copy
import io
import re
import shutil
import time
from pathlib import Path

from . import __version__, yamlio
from .errors import BadInput
from .ledger import atomic_write

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FILENAME = "llamafarm.yaml"


def render(models: list[dict], profile: str, project_dir: Path) -> str:
    from . import memo

    template = (TEMPLATES / "llamafarm.yaml.j2").read_text()
    key = memo.digest(template, models, profile, str(project_dir.resolve()), __version__)
    return memo.remember("render", key, lambda: _render(models, profile, project_dir))


def _render(models: list[dict], profile: str, project_dir: Path) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)  # noqa: S701 - YAML, not HTML
    name = re.sub(r"[^a-z0-9_-]+", "-", project_dir.resolve().name.lower()).strip("-") or "llamafarm"
    default = next((m["name"] for m in models if m.get("default")), models[0]["name"])
    return env.get_template("llamafarm.yaml.j2").render(
        farmhand_version=__version__, profile=profile, name=name, namespace="default",
        default_model=default, models=models,
    )


def merged(existing: dict, desired: dict, previously_managed: set[str]) -> dict:
    """The user's document with farmhand's runtime entries brought up to date (plain dicts)."""
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
    runtime["models"] = result
    names = {m.get("name") for m in result if isinstance(m, dict)}
    current_default = runtime.get("default_model")
    if wanted and (current_default is None or current_default in managed or current_default not in names):
        runtime["default_model"] = desired["runtime"]["default_model"]
    elif not wanted and current_default in managed:
        runtime.pop("default_model", None)
    return doc


def validate(doc: dict, source: str) -> None:
    yamlio.validate(doc, "llamafarm", f"{source} (LlamaFarm schema)")


def load_existing(path: Path) -> dict | None:
    if not path.exists():
        return None
    doc = yamlio.load_file(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}:1: expected a mapping at the top level, found {type(doc).__name__}")
    return doc


def write_merged(path: Path, desired_text: str, previously_managed: set[str]) -> Path | None:
    """Write the merged document; returns the backup path when an old file was replaced."""
    desired = yamlio.load_text(desired_text, "template llamafarm.yaml.j2")
    existing = load_existing(path)
    if existing is None:
        validate(desired, str(path))
        atomic_write(path, desired_text, 0o644)
        return None
    plain = merged(existing, desired, previously_managed)
    validate(plain, str(path))
    text = _round_trip(path, desired, previously_managed)
    backup = path.with_name(f"{path.name}.farmhand-backup-{time.strftime('%Y%m%dT%H%M%S')}")
    shutil.copy2(path, backup)
    atomic_write(path, text, path.stat().st_mode & 0o777)
    return backup


def _round_trip(path: Path, desired: dict, previously_managed: set[str]) -> str:
    """Apply the same merge through ruamel.yaml so the user's comments and order survive."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(path.read_text()) or {}
    plain = merged(_plain(doc), desired, previously_managed)
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
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _plain(node):
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node

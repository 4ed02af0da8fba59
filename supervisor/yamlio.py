"""Loading YAML and validating documents, with errors that name the file and the line.

Schemas live in supervisor/schemas/. Validation errors name the document path
("backend.port: 70000 is greater than the maximum of 65535") so a user can find the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from . import memo
from .errors import BadInput

SCHEMAS = Path(__file__).parent / "schemas"
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_Base):
    """A SafeLoader that refuses what YAML would silently accept: a key given twice (the last
    one would win) and numbers that are not finite (.inf, .nan: a timeout that never ends)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (also on line {first}; the later one would win)",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if value != value or value in (float("inf"), float("-inf")):
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a finite number",
                                                    node.start_mark)
        return value


StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


MAX_BYTES = 4 << 20  # profiles, overrides and llamafarm.yaml are a few KB
MEMO_MAX_BYTES = 64 << 10  # larger documents are parsed each time: the memo is read by every command
MAX_NODES = 200_000  # what the document holds with every alias expanded


def _check_expansion(node, source: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES nodes (a 'billion laughs'
    bomb: a few hundred bytes that every later walk, merge or schema check would expand)."""
    sizes: dict[int, int] = {}

    def size(n) -> int:
        known = sizes.get(id(n))
        if known is not None:
            return known
        sizes[id(n)] = 1  # a node met again while being counted adds nothing more
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        if total > MAX_NODES:
            raise BadInput(f"{source}:{n.start_mark.line + 1}: YAML aliases here expand to more than {MAX_NODES} "
                           "nodes; refusing to load it (write the values out, or use fewer nested aliases)")
        sizes[id(n)] = total
        return total

    size(node)


def load_text(text: str, source: str) -> Any:
    """The document in `text` (`source` names it in errors). A text read before comes back from
    the memo (JSON is read many times faster than YAML is parsed: every run reads ten profiles)."""
    key = memo.digest(text)
    known = memo.lookup("yaml", key)
    if isinstance(known, str):
        return json.loads(known)  # a new object each time: callers may change what they get
    doc = _parse(text, source)
    encoded = _json_exact(doc) if len(text) <= MEMO_MAX_BYTES else None
    if encoded is not None:
        memo.store("yaml", key, encoded)
    return doc


def _json_exact(doc: Any) -> str | None:
    """`doc` as JSON when JSON gives it back unchanged (not with int keys, dates, bytes), else None."""
    try:
        encoded = json.dumps(doc)
        return encoded if json.loads(encoded) == doc else None
    except (TypeError, ValueError):
        return None


def _parse(text: str, source: str) -> Any:
    if len(text) > MAX_BYTES:
        raise BadInput(f"{source}: {len(text)} bytes is more than farmhand reads as YAML ({MAX_BYTES}); "
                       "is this the right file?")
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text:  # without an alias nothing can expand
            _check_expansion(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise BadInput(f"{source}: YAML nested too deeply to load") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and opened is not None and mark is not None and opened.line != mark.line:
            problem += f" ({context.removeprefix('while parsing ')} opened on line {opened.line + 1})"
        raise BadInput(f"{where}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()


def load_file(path: Path) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    return load_text(text, str(path))


def key_line(path: Path, keys: list[str]) -> int:
    """The line of a nested key in a YAML file (1 when it cannot be found)."""
    try:
        node = yaml.compose(Path(path).read_text(), Loader=StrictLoader)
    except (OSError, yaml.YAMLError):
        return 1
    line = 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


@functools.cache
def schema(name: str) -> dict:
    return load_file(SCHEMAS / f"{name}.schema.yaml")


@functools.cache
def _schema_digest(name: str) -> str:
    """The schema file's bytes, digested: a memo key that needs no YAML parse of the schema."""
    return hashlib.sha256((SCHEMAS / f"{name}.schema.yaml").read_bytes()).hexdigest()


def validate(document: Any, schema_name: str, source: str) -> None:
    """Raise BadInput naming the first (deepest) problem, or return quietly.

    A document already found valid against the same schema is not validated again."""

    key = memo.digest(document, _schema_digest(schema_name))
    problem = memo.remember("valid", key, lambda: _first_problem(document, schema_name))
    if problem:
        raise BadInput(f"{source}: {problem}")


def _first_problem(document: Any, schema_name: str) -> str | None:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema(schema_name))
    # best_match descends into anyOf/oneOf to the branch that came closest, so a bad port
    # inside a runtime says "port: 70000 is greater than ..." rather than "not valid under any".
    err = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if err is None:
        return None
    err = _closest_branch(err)
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    return f"{where}: {err.message}"


def _closest_branch(err):
    """For "not valid under any of the given schemas": the error of the alternative the value
    came closest to (of its own type, with the fewest problems), which says what to fix."""
    import jsonschema

    while err.validator in ("anyOf", "oneOf") and err.context:
        branches: dict = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        typed = [errs for errs in branches.values() if not any(e.validator == "type" and not e.path for e in errs)]
        if not typed:
            break
        err = jsonschema.exceptions.best_match(min(typed, key=len))
    return err


def deep_merge(base: Any, override: Any) -> Any:
    """Helm-values style: mappings merge key by key, `null` removes a key, anything else in
    `override` (lists included) replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override

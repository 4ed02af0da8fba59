"""A registry of plugins by name whose modules load the first time one is asked for.

Backends and install methods are listed as `name -> "module:Class"`; the module is imported,
and the class instantiated once, when a plan first names it (the way ramalama loads its
transports). A no-op `apply` of a llama-server host loads llama-server's backend and the
installer it was installed with, not the other five backends' modules. Asking whether a name is
registered, or listing the names, loads nothing; iterating the values loads every entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """name -> plugin instance, each built from `package.module:Class` on first lookup. The
    class's `key_attr` (its `name`, its `method`) must be the name it is listed under."""

    def __init__(self, package: str, entries: dict[str, str], key_attr: str):
        self.package, self.entries, self.key_attr = package, dict(entries), key_attr
        self._loaded: dict[str, T] = {}

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            module, cls = self.entries[name].split(":")  # KeyError for an unknown name, as a dict
            plugin = getattr(importlib.import_module(f"{self.package}.{module}"), cls)()
            listed_as = getattr(plugin, self.key_attr)
            if listed_as != name:
                raise RuntimeError(f"{self.package}: {self.entries[name]} is listed as {name!r} but its "
                                   f"{self.key_attr} is {listed_as!r}")
            self._loaded[name] = plugin
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

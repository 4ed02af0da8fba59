"""Two spellings farmhand reads in many places, written once: a secret by reference
(`${env:VAR}`, resolved only where a process starts: expand_env) and a sha256 digest (64
lowercase hex digits, as sha256sum prints it)."""

from __future__ import annotations

import re

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def env_ref(var: str) -> str:
    return "${env:" + var + "}"


def env_refs(text: str) -> list[str]:
    """The variables `text` refers to."""
    return ENV_REF.findall(text)


def is_sha256(text: str | None) -> bool:
    return isinstance(text, str) and SHA256_HEX.fullmatch(text) is not None


class MissingSecret(Exception):
    def __init__(self, var: str):
        super().__init__(var)
        self.var = var


def expand_env(value: str, env: dict[str, str]) -> str:
    """Resolve ${env:VAR} references at spawn time (specs on disk hold only the reference).
    An unset or empty variable is an error: a runtime never starts with an empty key."""

    def resolve(m: re.Match) -> str:
        if not env.get(m.group(1)):
            raise MissingSecret(m.group(1))
        return env[m.group(1)]

    return ENV_REF.sub(resolve, value)

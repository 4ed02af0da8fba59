"""Two spellings farmhand reads in many places, written once: a secret by reference
(`${env:VAR}`, resolved only where a process starts) and a sha256 digest (64 lowercase hex
digits, as sha256sum prints it)."""

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

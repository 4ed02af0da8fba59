"""lemonade://NAME: a model of Lemonade's own registry (its server_models.json: FLM models for
the NPU, GGUFs for its llama.cpp recipes), pulled by the Lemonade backend itself through
POST /api/v1/pull. Whether NAME exists is only known to a running Lemonade, so it is taken as
reachable here and the pull step names the error."""

from __future__ import annotations

from .base import REACH_TIMEOUT, Source


class LemonadeSource(Source):
    scheme = "lemonade"

    def delivers_file(self, uri: str) -> bool:
        return False

    def describe(self, uri: str) -> str:
        return f"{uri} (pulled by Lemonade from its registry)"

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        return True, "lemonade: pulled by Lemonade itself"

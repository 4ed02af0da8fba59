"""Checks several test files make, in one place (test files import this, never each other):
what a user checks of a real model's answer, the ports and files a run leaves, and the one-line
error every bad input gets."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import requests

TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>")


def assert_real_gemma_answers(url: str, alias: str, aliases: tuple[str, ...] = ("default",)) -> None:
    """What a user checks: the chat prompt is rendered in Gemma's own turn format (not ChatML),
    the answer is words and not template tokens, and the weights really compute (a plain
    completion continues the days of the week). The model is a base model, so its chat answers
    are text, not good answers: this proves the path, not the quality."""
    base = url.removesuffix("/v1")
    prompt = requests.post(f"{base}/apply-template", timeout=30,
                           json={"messages": [{"role": "user", "content": "Name one colour."}]}).json()["prompt"]
    assert prompt.startswith("<start_of_turn>user\nName one colour.<end_of_turn>"), prompt
    assert_real_gemma_replies(url, alias, aliases)


def assert_real_gemma_replies(url: str, alias: str, aliases: tuple[str, ...] = ("default",)) -> None:
    """The answers alone (for a server that cannot show its rendered prompt): words, not template
    tokens, and a plain completion that continues the days of the week."""
    reply = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": alias, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    assert reply["model"] in {alias, *aliases}  # llama-server answers with one of the runtime's aliases
    content = reply["choices"][0]["message"]["content"]
    assert not any(t in content for t in TEMPLATE_TOKENS), content
    assert re.search(r"[A-Za-z]{3,}", content), content
    done = requests.post(f"{url}/completions", timeout=120, json={
        "model": alias, "max_tokens": 8, "temperature": 0, "prompt": "Monday, Tuesday, Wednesday,"}).json()
    assert "Thursday" in done["choices"][0]["text"], done


def listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().endswith(lines[0])  # the error is the last word, on one line
    return lines[0]


class Trials:
    """A fault repeated `total` times: each trial records its checks by name, the report prints
    how many trials were clean and fails naming every check that failed in which trial."""

    def __init__(self, capsys, name: str, total: int):
        self.capsys, self.name, self.total = capsys, name, total
        self.done, self.failures = 0, []

    def record(self, **checks: bool) -> None:
        self.done += 1
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            self.failures.append(f"trial {self.done}: {', '.join(failed)}")

    @property
    def clean(self) -> int:
        return self.done - len(self.failures)

    def report(self, name: str | None = None) -> None:
        with self.capsys.disabled():
            print(f"\n  fault {name or self.name}: {self.clean}/{self.total} clean", end="")
        assert self.done == self.total and not self.failures, (
            f"fault {name or self.name}: {self.clean}/{self.total} clean; failed checks:\n" + "\n".join(self.failures))

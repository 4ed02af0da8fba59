"""A stdout callback for the tests: the run as one JSON document (ansible-core 2.19 moved its own
`json` callback to the ansible.posix collection, which ansible-core alone does not ship)."""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: farmhand_json
type: stdout
short_description: the run as one JSON document
description: tasks with each host's result, and the per-host stats
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "farmhand_json"

    def __init__(self):
        super().__init__()
        self.tasks: list[dict] = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.tasks.append({"task": {"name": task.get_name()}, "hosts": {}})

    def _record(self, result, **extra):
        if not self.tasks:
            return
        body = dict(result._result)
        body.update(extra)
        self.tasks[-1]["hosts"][result._host.get_name()] = json.loads(json.dumps(body, default=str))

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        out = {"plays": [{"tasks": self.tasks}], "stats": {h: stats.summarize(h) for h in hosts}}
        self._display.display(json.dumps(out))

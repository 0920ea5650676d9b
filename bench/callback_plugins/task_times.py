"""Ansible callback `task_times`: the wall time of every task of a run, written as JSON when the run ends (what
ansible.posix's profile_tasks prints, which ansible-core does not ship). A task's time runs from its start to the
start of the next task (or the end of its play): with the linear strategy, the time until every host of the batch
is done with it. A task run once per batch (`serial`) or per play adds up, with its count.

    ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_times \\
    KUMA_TASK_TIMES=times.json ansible-playbook ...
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: wall time of each task, as JSON in the file named by KUMA_TASK_TIMES
description: Records each task's wall time (start to the next task's start) and writes them when the run ends.
requirements:
  - enabled in callbacks_enabled (or ANSIBLE_CALLBACKS_ENABLED)
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._play = ""
        self._current: tuple[str, float] | None = None  # (key, start)
        self._tasks: dict[str, dict[str, Any]] = {}
        self._started = time.monotonic()

    def _close(self) -> None:
        if self._current is not None:
            key, start = self._current
            entry = self._tasks.setdefault(key, {"seconds": 0.0, "count": 0})
            entry["seconds"] += time.monotonic() - start
            entry["count"] += 1
            self._current = None

    def _start(self, task: Any) -> None:
        self._close()
        role = getattr(task, "_role", None)
        name = task.get_name().strip()
        key = f"{self._play} | {role.get_name() + ' : ' if role and role.get_name() not in name else ''}{name}"
        self._current = (key, time.monotonic())

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._close()
        self._play = play.get_name().strip()

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._start(task)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._close()
        path = os.environ.get("KUMA_TASK_TIMES")
        if not path:
            return
        tasks = sorted(({"task": k, **v} for k, v in self._tasks.items()), key=lambda t: -t["seconds"])
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"wall_seconds": time.monotonic() - self._started, "tasks": tasks}, f, indent=1)

"""The console view of `livo run`: one live line per pipeline task, while kfp.local's full output goes to the log.

kfp.local prints everything — its task events, each task's executor input and its process output — to stdout.
`TaskView` is the stream that output is redirected to: it writes every byte to the run's log file and reads the
lines as they pass, to keep one line per task (name, state, elapsed seconds, and the task's latest progress record,
see `livo.progress`). On a terminal the lines are redrawn in place about once a second; elsewhere (CI logs, a pipe)
each task gets one line when it starts and one when it finishes.
"""

from __future__ import annotations

import io
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from livo.progress import format_record, parse_record

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STARTED_RE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - \w+ - Executing task '([^']+)'")
_FINISHED_RE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - \w+ - Task '([^']+)' finished with status (\w+)")

_SYMBOLS = {"RUNNING": "▶", "SUCCESS": "✓", "FAILURE": "✗", "CANCELED": "■"}


@dataclass
class TaskLine:
    name: str
    started: float
    state: str = "RUNNING"
    finished: float | None = None
    running: int = 1  # concurrent iterations (the data shards of a ParallelFor share one task name)
    runs: int = 1
    progress: dict[str, Any] = field(default_factory=dict)

    def render(self, now: float) -> str:
        elapsed = (self.finished if self.finished is not None else now) - self.started
        state = self.state.lower()
        if self.runs > 1:
            state += f", {self.runs} in parallel"
        text = f"{_SYMBOLS.get(self.state, '?')} {self.name:<22} {state:<22} {elapsed:7.1f} s"
        if self.progress and self.state == "RUNNING":
            text += "  " + format_record(self.progress)
        return text


class TaskView(io.TextIOBase):
    """A text stream: everything to `log`, one line per task to `console`."""

    def __init__(self, log: TextIO, console: TextIO, *, live: bool | None = None, refresh_s: float = 1.0,
                 clock=time.monotonic):
        self.log = log
        self.console = console
        self.live = console.isatty() if live is None else live
        self.refresh_s = refresh_s
        self.clock = clock
        self.tasks: dict[str, TaskLine] = {}
        self._pending = ""
        self._drawn = 0  # lines of the live block on screen
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- the stream --------------------------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.log.write(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            changed = False
            for line in lines:
                changed |= self._read(line)
            if changed and self.live:
                self._draw()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.log.flush()

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> TaskView:
        if self.live:
            self._ticker = threading.Thread(target=self._tick, name="livo-run-view", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2 * self.refresh_s)
        with self._lock:
            if self._pending:
                self._read(self._pending)
                self._pending = ""
            now = self.clock()
            for task in self.tasks.values():  # a task still running when the pipeline returned did not finish
                if task.state == "RUNNING":
                    task.state, task.finished = "CANCELED", now
                    if not self.live:
                        self._print(task.render(now))
            if self.live:
                self._draw()
            self.log.flush()

    def _tick(self) -> None:
        while not self._stopped.wait(self.refresh_s):
            with self._lock:
                if any(t.state == "RUNNING" for t in self.tasks.values()):
                    self._draw()

    # -- reading kfp.local's output ----------------------------------------------------------------------------------
    def _read(self, raw: str) -> bool:
        line = _ANSI_RE.sub("", raw).strip()
        now = self.clock()
        started = _STARTED_RE.match(line)
        if started:
            name = started.group(1)
            task = self.tasks.get(name)
            if task is not None and task.state == "RUNNING":  # another iteration of a running ParallelFor
                task.running += 1
                task.runs += 1
                return True
            # kfp.local runs one task at a time apart from a ParallelFor's iterations, and may drop a finish line of
            # those: when another task starts, the ones still shown running are done
            for other in self.tasks.values():
                if other.state == "RUNNING" and other.name != name:
                    other.state, other.finished, other.running = "SUCCESS", now, 0
                    if not self.live:
                        self._print(other.render(now))
            if task is None:
                task = self.tasks[name] = TaskLine(name, now)
            else:  # a retry of a task that finished
                task.state, task.finished, task.running, task.progress = "RUNNING", None, 1, {}
            if not self.live:
                self._print(task.render(now))
            return True
        finished = _FINISHED_RE.match(line)
        if finished and finished.group(1) in self.tasks:
            task = self.tasks[finished.group(1)]
            task.running = max(0, task.running - 1)
            if finished.group(2) != "SUCCESS":
                task.state = finished.group(2)
            if task.running == 0:
                task.finished = now
                if task.state == "RUNNING":
                    task.state = "SUCCESS"
                if not self.live:
                    self._print(task.render(now))
            return True
        record = parse_record(line)
        if record is not None:
            running = [t for t in self.tasks.values() if t.state == "RUNNING"]
            if running:  # kfp.local runs one task at a time, except the iterations of one ParallelFor
                max(running, key=lambda t: t.started).progress = record
                return True
        return False

    # -- drawing -----------------------------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        now = self.clock()
        return [task.render(now) for task in self.tasks.values()]

    def _draw(self) -> None:
        lines = self.lines()
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        out += "".join(f"\x1b[2K{line}\n" for line in lines)
        self._drawn = len(lines)
        self.console.write(out)
        self.console.flush()

    def _print(self, line: str) -> None:
        self.console.write(line + "\n")
        self.console.flush()

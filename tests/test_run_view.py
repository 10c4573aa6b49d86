"""`livo run`'s console view (livo/run_view.py): kfp.local's output goes whole to the log, the console gets
one line per task with its state, elapsed seconds and latest progress record."""

from __future__ import annotations

import io
import json

from livo.progress import PROGRESS_PREFIX, format_record, parse_record
from livo.run_view import TaskView

EXECUTOR_INPUT = "".join(f'            "parameter_{i}": "value",\n' for i in range(40))


def kfp_output(progress_every: int = 1) -> list[tuple[float, str]]:
    """(clock, text) chunks as kfp.local writes them: ANSI task events, indented task output, progress records."""
    def event(clock: str, text: str) -> str:
        return f"{clock} - INFO - {text}\n"

    def record(desc: str, n: int, total: int, unit: str) -> str:
        return "            " + PROGRESS_PREFIX + json.dumps({"desc": desc, "n": n, "total": total, "unit": unit}) + "\n"

    chunks = [(0.0, event("08:00:00.000", "Executing task \x1b[96m'validate-inputs'\x1b[0m")),
              (0.1, EXECUTOR_INPUT),
              (0.2, "    [info] something the task printed: Task 'nested' finished with status SUCCESS\n"),
              (1.5, event("08:00:01.500", "Task \x1b[96m'validate-inputs'\x1b[0m finished with status "
                                          "\x1b[92mSUCCESS\x1b[0m")),
              (1.6, event("08:00:01.600", "Executing task \x1b[96m'generate-data-shard'\x1b[0m")),
              (1.7, event("08:00:01.700", "Executing task \x1b[96m'generate-data-shard'\x1b[0m")),
              (5.0, record("generate", 40, 80, "img")),
              # one shard's finish line is missing, as kfp.local sometimes drops it
              (30.0, event("08:00:30.000", "Task \x1b[96m'generate-data-shard'\x1b[0m finished with status "
                                           "\x1b[92mSUCCESS\x1b[0m")),
              (30.1, event("08:00:30.100", "Executing task \x1b[96m'train-value-encoder'\x1b[0m"))]
    chunks += [(30.1 + 10 * k, record("train", 30 * k, 300, "step")) for k in range(1, 10, progress_every)]
    chunks += [(130.0, event("08:02:10.000", "Task \x1b[96m'train-value-encoder'\x1b[0m finished with status "
                                             "\x1b[91mFAILURE\x1b[0m")),
               (130.1, event("08:02:10.100", "Executing task \x1b[96m'record-outcome'\x1b[0m"))]
    return chunks


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(view: TaskView, clock: FakeClock, chunks: list[tuple[float, str]], split: int = 7) -> None:
    with view:
        for when, text in chunks:
            clock.now = when
            for start in range(0, len(text), split):  # writes do not respect line boundaries
                view.write(text[start:start + split])
        clock.now = 131.0


def test_the_log_gets_everything_and_a_pipe_gets_a_start_and_a_finish_line_per_task():
    log, console, clock = io.StringIO(), io.StringIO(), FakeClock()
    chunks = kfp_output()
    feed(TaskView(log, console, live=False, clock=clock), clock, chunks)
    assert log.getvalue() == "".join(text for _, text in chunks)
    lines = console.getvalue().splitlines()
    assert lines == [
        "▶ validate-inputs        running                    0.0 s",
        "✓ validate-inputs        success                    1.5 s",
        "▶ generate-data-shard    running                    0.0 s",
        "✓ generate-data-shard    success, 2 in parallel    28.5 s",
        "▶ train-value-encoder    running                    0.0 s",
        "✗ train-value-encoder    failure                   99.9 s",
        "▶ record-outcome         running                    0.0 s",
        "■ record-outcome         canceled                   0.9 s",
    ]
    assert "parameter_3" not in console.getvalue() and "nested" not in console.getvalue()


def test_a_terminal_gets_one_line_per_task_redrawn_in_place_with_its_progress():
    log, console, clock = io.StringIO(), io.StringIO(), FakeClock()
    view = TaskView(log, console, live=True, refresh_s=3600, clock=clock)
    chunks = kfp_output()
    with view:
        for when, text in chunks[:-2]:  # up to the last train progress record
            clock.now = when
            view.write(text)
        clock.now = 125.0
        assert view.lines() == [
            "✓ validate-inputs        success                    1.5 s",
            "✓ generate-data-shard    success, 2 in parallel    28.5 s",
            "▶ train-value-encoder    running                   94.9 s  train 270/300 step (90 %)",
        ]
        for when, text in chunks[-2:]:
            clock.now = when
            view.write(text)
        clock.now = 131.0
    screen = console.getvalue()
    # each redraw moves the cursor up over the block it drew before and clears every line it rewrites
    assert screen.count("\x1b[2K✓ validate-inputs") > 1 and "\x1b[3F" in screen
    assert screen.rstrip("\n").rsplit("\n", 1)[-1] == "\x1b[2K■ record-outcome         canceled                   0.9 s"
    assert "parameter_3" not in screen


def test_progress_records_round_trip():
    line = "    " + PROGRESS_PREFIX + json.dumps({"desc": "train", "n": 3, "total": 4, "unit": "step"})
    assert format_record(parse_record(line)) == "train 3/4 step (75 %)"
    assert format_record({"desc": "generate", "n": 12, "total": 0, "unit": "img"}) == "generate 12 img"
    assert parse_record("livo-progress {broken") is None and parse_record("train 3/4") is None


def test_progress_bars_print_records_under_livo_progress_lines(monkeypatch, capsys):
    from livo.progress import ENV_PROGRESS_LINES, progress_bar

    monkeypatch.setenv(ENV_PROGRESS_LINES, "0.1")
    for _ in progress_bar(range(3), desc="train", unit="step"):
        pass
    records = [parse_record(line) for line in capsys.readouterr().err.splitlines()]
    assert records[0]["n"] == 0 and records[-1] == {"desc": "train", "n": 3, "total": 3, "unit": "step",
                                                     "elapsed": records[-1]["elapsed"]}
    monkeypatch.delenv(ENV_PROGRESS_LINES)
    for _ in progress_bar(range(3), desc="train", unit="step", disable=True):
        pass
    assert PROGRESS_PREFIX not in capsys.readouterr().err

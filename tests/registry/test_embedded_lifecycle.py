"""The embedded SeaweedFS never outlives its owner, a dead owner's server is replaced, and only the S3 port answers
(issue 16, part 2). Real `weed` processes and real `livo` subprocesses; every wait is bounded."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livo.errors import StoreError
from livo.store import EmbeddedSeaweedFS, descendant_pids, process_alive, process_cmdline

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.store


# ------------------------------------------------------------------------------------------------------- helpers
def _weed_pids_on(data_dir: Path) -> list[int]:
    flag = f"-dir={data_dir.resolve() / 'data'}"
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            argv = process_cmdline(int(entry.name)) or []
            if argv and Path(argv[0]).name == "weed" and flag in argv and process_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _livo(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`livo ARGS` as a subprocess in its own session (so a failing test can still kill its whole group)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in ("LIVO_S3_ENDPOINT", "LIVO_S3_ACCESS_KEY", "LIVO_S3_SECRET_KEY", "LIVO_S3_BUCKET"):
        full_env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "livo.cli", *args], cwd=REPO, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:  # only on failure is anything left: kill the group we created, then any weed it left
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    for pid in [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]:
        argv = process_cmdline(pid) or []
        if argv and Path(argv[0]).name == "weed" and any(a.startswith(f"-dir={tmp_path}") for a in argv):
            os.kill(pid, signal.SIGKILL)


def _serve(data_dir: Path, processes: list[subprocess.Popen]) -> tuple[subprocess.Popen, dict[str, str], int]:
    """Start `livo store serve`; return it, the exported variables and the weed pid it reports."""
    proc = _livo("store", "serve", "--data-dir", str(data_dir))
    processes.append(proc)
    exports: dict[str, str] = {}
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"store serve exited early: {proc.wait(timeout=30)} {proc.stderr.read()}")
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            exports[name] = value.strip("'")
        if line.startswith("# data:"):
            return proc, exports, int(line.split("pid: ")[1].split()[0])
    raise AssertionError("store serve did not report ready within 120 s")


def _store(exports: dict[str, str]):
    from livo.store import ObjectStore

    return ObjectStore.from_env(exports)


# ------------------------------------------------------------------------------------------ only S3 is reachable
def _listening_sockets_of(pid: int) -> list[tuple[str, int]]:
    inodes = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        with_target = os.readlink(fd.path)
        if with_target.startswith("socket:["):
            inodes.add(with_target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].rsplit(":", 1)
                found.append((address, int(port, 16)))
    return found


def _http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of one unauthenticated request; (0, b"") when the port does not speak HTTP/1.1 to us."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, response.read()
    except (http.client.HTTPException, ConnectionError, TimeoutError):
        return 0, b""
    finally:
        conn.close()


@pytest.mark.slow
def test_only_the_authenticated_s3_port_is_reachable(tmp_path: Path) -> None:
    with EmbeddedSeaweedFS(tmp_path / "store", bucket="probe", stop_grace_s=2.0) as server:
        store = server.store()
        secret = os.urandom(64).hex().encode()
        store.put_bytes("data/object.bin", secret)
        assert oct((server.data_dir / "security.toml").stat().st_mode & 0o777) == "0o600"

        listening = _listening_sockets_of(server.pid)
        assert {port for _, port in listening} == set(server.ports.values()), listening
        assert {address for address, _ in listening} == {"0100007F"}, listening  # 127.0.0.1 only

        key_paths = ["/buckets/probe/data/object.bin", "/probe/data/object.bin"]
        for name, port in server.ports.items():
            if name == "s3":
                continue
            # object reads and every data or admin operation; read-only status pages (the master's UI page and
            # /cluster/status, the volume server's /status, /healthz) stay up: SeaweedFS 4.48 cannot switch them off
            probes = [("GET", path, None) for path in key_paths + [
                "/dir/assign", "/dir/lookup?volumeId=1", "/col/delete?collection=probe", "/vol/grow?count=1",
                "/vol/vacuum", "/3,01637037d6", "/1,01637037d6"]]
            probes += [(method, path, b"overwritten") for method in ("PUT", "POST", "DELETE")
                       for path in key_paths + ["/3,01637037d6", "/submit", "/vol/grow?count=1"]]
            for method, path, body in probes:
                status, answer = _http(port, method, path, body)
                assert not 200 <= status < 300, f"{name} port {port}: {method} {path} answered {status}"
                assert secret not in answer
        # nothing above changed or deleted the object; S3 with the credentials works, S3 without them does not
        assert store.get_bytes("data/object.bin") == secret
        status, _ = _http(server.ports["s3"], "GET", "/probe/data/object.bin")
        assert status == 403
        status, _ = _http(server.ports["s3"], "PUT", "/probe/data/object.bin", b"overwritten")
        assert status == 403
        assert store.get_bytes("data/object.bin") == secret


# ------------------------------------------------------------------------------------ signals and stale servers
@pytest.mark.slow
def test_store_serve_stops_on_sigterm_and_sighup_and_refuses_a_second_owner(tmp_path: Path,
                                                                             processes: list) -> None:
    data_dir = tmp_path / "store"
    proc, exports, weed_pid = _serve(data_dir, processes)
    assert process_alive(weed_pid) and _weed_pids_on(data_dir) == [weed_pid]
    _store(exports).put_bytes("kept.txt", b"kept")
    record = json.loads((data_dir / "weed.pid").read_text())
    assert (record["weed_pid"], record["owner_pid"]) == (weed_pid, proc.pid)

    # a live owner: a second server on the same directory is refused in one line, and the first keeps serving
    with pytest.raises(StoreError) as err:
        EmbeddedSeaweedFS(data_dir).start()
    message = str(err.value)
    assert f"in use: process {proc.pid}" in message and "store serve" in message and "\n" not in message
    assert process_alive(weed_pid)

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert time.monotonic() - started < 30
    assert not process_alive(weed_pid) and _weed_pids_on(data_dir) == []
    stderr = proc.stderr.read().strip().splitlines()
    assert stderr[-1].startswith("livo: SIGTERM: the embedded SeaweedFS server") and "Traceback" not in "".join(stderr)
    assert not (data_dir / "weed.pid").exists()

    # the next start works at once (no stale lock) and keeps the data; SIGHUP stops it too
    proc, exports, weed_pid = _serve(data_dir, processes)
    assert _store(exports).get_bytes("kept.txt") == b"kept"
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 129
    assert not process_alive(weed_pid) and _weed_pids_on(data_dir) == []


@pytest.mark.slow
def test_server_orphaned_by_a_killed_owner_is_replaced_with_a_note(tmp_path: Path, processes: list,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "store"
    proc, exports, weed_pid = _serve(data_dir, processes)
    _store(exports).put_bytes("kept.txt", b"kept")
    proc.send_signal(signal.SIGKILL)  # no clean-up possible: the server is orphaned
    proc.wait(timeout=30)
    assert process_alive(weed_pid), "the server should outlive a SIGKILLed owner (that is the case under test)"

    with caplog.at_level("WARNING", logger="livo.store"), \
            EmbeddedSeaweedFS(data_dir, stop_grace_s=2.0) as server:
        assert not process_alive(weed_pid) and _weed_pids_on(data_dir) == [server.pid]
        assert server.store().get_bytes("kept.txt") == b"kept"
    notes = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(notes) == 1 and f"pid {weed_pid}" in notes[0] and f"(pid {proc.pid})" in notes[0], notes
    assert "\n" not in notes[0]
    assert _weed_pids_on(data_dir) == []


# ---------------------------------------------------------------------------------------------- livo run + SIGTERM
def _task_pids(livo_pid: int, weed_pids: set[int]) -> list[int]:
    return [pid for pid in descendant_pids(livo_pid) if pid not in weed_pids]


@pytest.mark.slow
def test_livo_run_sigterm_stops_tasks_and_store_and_records_canceled(tmp_path: Path, processes: list) -> None:
    runs = tmp_path / "runs"
    proc = _livo("run", "--preset", "tiny", "--allow-ungated", "--runs-dir", str(runs), "--threads", "1")
    processes.append(proc)
    store_dir = runs / "store"
    seen: set[int] = set()

    def tasks_running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"livo run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        weed = set(_weed_pids_on(store_dir)) if store_dir.exists() else set()
        # wait for a task after the first (validate-inputs): by then the run has records in the store
        tasks = [pid for pid in _task_pids(proc.pid, weed) if "--executor_input" in (process_cmdline(pid) or [])
                 and "validate" not in " ".join(process_cmdline(pid) or [])]
        seen.update(_task_pids(proc.pid, weed))
        return bool(weed) and bool(tasks)

    _wait(tasks_running, 240, "a kfp.local task of `livo run` to be running")
    time.sleep(2.0)  # let the task get going (and possibly write its first record)
    seen.update(_task_pids(proc.pid, set(_weed_pids_on(store_dir))))
    weed = _weed_pids_on(store_dir)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 143
    assert [pid for pid in seen if process_alive(pid)] == [], "task processes survived SIGTERM"
    assert [pid for pid in weed if process_alive(pid)] == [] and _weed_pids_on(store_dir) == []

    assert time.monotonic() - signalled < 30, "stopping tasks and store took too long"
    run_dir = next(runs.glob("run-*"))
    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["status"] == "canceled" and "SIGTERM" in outcome["summary"]
    stderr = proc.stderr.read()
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("livo: run canceled by SIGTERM") and "goroutine" not in stderr, last
    assert "clean-up problems" not in last

    # the next start on the same runs directory works (no orphan, no leveldb lock) and shows no stale note
    with EmbeddedSeaweedFS(store_dir, stop_grace_s=2.0) as server:
        assert server.store().bucket_exists()
        if outcome.get("outcome_uri"):  # the run id was known: the store holds the same record
            from livo.store import parse_s3_uri

            stored = server.store().get_json(parse_s3_uri(outcome["outcome_uri"])[1])
            assert (stored["status"], stored["run_id"]) == ("canceled", outcome["run_id"])
        else:
            assert "not written to the store" in outcome["record"]

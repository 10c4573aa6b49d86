"""Stores that misbehave: each failure is bounded in time and reported for what it is (issue 16, part 4a).

Every server here is a loopback socket or HTTP server the test starts itself; no test needs SeaweedFS.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from livo.cli import main
from livo.errors import ConfigError, StoreError
from livo.store import DEFAULT_TIMEOUT_S, MAX_ATTEMPTS, ObjectStore, timeout_from_env

ENV = {"LIVO_S3_ACCESS_KEY": "AK", "LIVO_S3_SECRET_KEY": "SK", "LIVO_S3_BUCKET": "livo"}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def _http_server(status: int, body: bytes, content_type: str) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            requests.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


@pytest.fixture
def failing_http() -> Iterator[callable]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: bytes = b"service unavailable", content_type: str = "text/plain"):
        server, requests = _http_server(status, body, content_type)
        servers.append(server)
        return server.server_address[1], requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_silent_server_gives_up_within_the_configured_timeout(silent_port: int) -> None:
    store = ObjectStore(f"127.0.0.1:{silent_port}", "AK", "SK", "livo", region="us-east-1", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.get_bytes("models/m/v1/config.json")
    elapsed = time.monotonic() - started
    assert elapsed < MAX_ATTEMPTS * 1.5 + 3.0, elapsed
    message = str(err.value)
    assert "sent no answer within 1.5 s" in message and "LIVO_S3_TIMEOUT" in message, message
    assert "refused" not in message and "\n" not in message


def test_silent_server_through_the_cli(silent_port: int, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {**ENV, "LIVO_S3_ENDPOINT": f"http://127.0.0.1:{silent_port}", "LIVO_S3_TIMEOUT": "2"}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = main(["lineage", "show", "livo-toy@v1"])
    elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 10.0, elapsed
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("livo: error: object store at http://127.0.0.1:") and "within 2 s" in err, err


def test_default_timeout_bounds_a_small_call() -> None:
    assert MAX_ATTEMPTS * DEFAULT_TIMEOUT_S <= 30.0
    assert timeout_from_env({}) == DEFAULT_TIMEOUT_S
    assert timeout_from_env({"LIVO_S3_TIMEOUT": "2.5"}) == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="LIVO_S3_TIMEOUT"):
            timeout_from_env({"LIVO_S3_TIMEOUT": bad})


@pytest.mark.parametrize("xml", [False, True], ids=["plain-body", "s3-xml-body"])
def test_server_error_reports_its_http_code(failing_http, xml: bool) -> None:
    body = (b'<?xml version="1.0"?><Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate'
            b'</Message></Error>') if xml else b"upstream down"
    port, requests = failing_http(503, body, "application/xml" if xml else "text/plain")
    store = ObjectStore(f"127.0.0.1:{port}", "AK", "SK", "livo", region="us-east-1", timeout_s=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.put_bytes("a/b.json", b"{}")
    assert time.monotonic() - started < 5.0
    message = str(err.value)
    assert "HTTP 503" in message and "server error" in message, message
    assert "unreachable" not in message and "is running" not in message
    assert len(requests) == MAX_ATTEMPTS  # retried once, not forever


def test_client_error_without_s3_body_is_not_called_unreachable(failing_http) -> None:
    port, _ = failing_http(418, b"<html>teapot</html>", "text/html")
    store = ObjectStore(f"127.0.0.1:{port}", "AK", "SK", "livo", region="us-east-1", timeout_s=2)
    with pytest.raises(StoreError) as err:
        store.get_bytes("k")
    message = str(err.value)
    assert "HTTP 418" in message and "non-S3 answer" in message and "unreachable" not in message, message


def test_refused_port_says_refused() -> None:
    store = ObjectStore(f"127.0.0.1:{_closed_port()}", "AK", "SK", "livo", timeout_s=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.list("models")
    assert time.monotonic() - started < 5.0
    message = str(err.value)
    assert "refused the connection" in message and "LIVO_S3_ENDPOINT" in message and "is running" in message


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:599810", "127.0.0.1:0", "http://127.0.0.1:port",
                                      "ftp://127.0.0.1:21", "http://:9000", "http://host:9000/path"])
def test_bad_endpoint_is_bad_input(endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="LIVO_S3_ENDPOINT"):
        ObjectStore(endpoint, "AK", "SK", "livo")
    for name, value in {**ENV, "LIVO_S3_ENDPOINT": endpoint}.items():
        monkeypatch.setenv(name, value)
    assert main(["lineage", "show", "livo-toy@v1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "LIVO_S3_ENDPOINT" in err, err


@pytest.mark.parametrize("key", ["models/../secrets", "..", "a/./b", "/abs/key", "", "a\nb"])
def test_bad_key_is_bad_input(key: str) -> None:
    store = ObjectStore(f"127.0.0.1:{_closed_port()}", "AK", "SK", "livo")
    for call in (store.get_bytes, store.exists, store.delete, lambda k: store.put_bytes(k, b"x")):
        with pytest.raises(ConfigError, match="invalid object key"):
            call(key)

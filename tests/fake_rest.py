"""Base of the in-process REST fakes the tests talk to (KFP API, Kubeflow Model Registry): a loopback HTTP server in
a thread, JSON in and out, an optional bearer token. Subclasses implement `route` and say how they refuse a token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class FakeRestServer:
    # (status, body) answered when `required_token` is set and the request does not carry it
    unauthorized: tuple[int, Any] = (401, {"message": "unauthorized"})

    def __init__(self, required_token: str | None = None):
        self.required_token = required_token
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """(status, JSON-able payload) for one request; `body` is parsed JSON, raw bytes, or None when empty."""
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self) -> None:
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = raw or None
                if raw and "json" in (self.headers.get("Content-Type") or ""):
                    body = json.loads(raw)
                if fake.required_token and self.headers.get("Authorization") != f"Bearer {fake.required_token}":
                    status, payload = fake.unauthorized
                else:
                    status, payload = fake.route(self.command, parsed.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _respond  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        return Handler

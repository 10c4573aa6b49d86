"""Errors a request (or a model load) can end in, with the HTTP status each maps to.

Any exception may carry `http_status` (and `retry_after` for 503); `http_status_for` falls back on the livo error
classes: a `ConfigError` is the client's fault (400), any other failure is ours (500)."""

from __future__ import annotations

from livo.errors import ConfigError, LivoError, one_line  # noqa: F401  (one_line: re-exported for the server)


class ServingError(LivoError):
    http_status = 500


class BadRequest(ServingError, ConfigError):
    """The request is malformed or asks for something this model cannot do (HTTP 400)."""

    http_status = 400


class VersionNotFound(ServingError, ConfigError):
    """The model version asked for is not registered / not the one served (HTTP 404; `livo serve` exit 2)."""

    http_status = 404


class Overloaded(ServingError):
    """The queue is full (HTTP 503 with Retry-After)."""

    http_status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


def http_status_for(exc: BaseException) -> int:
    status = getattr(exc, "http_status", None)
    if isinstance(status, int) and 400 <= status <= 599:
        return status
    if isinstance(exc, ConfigError):
        return 400
    return 500

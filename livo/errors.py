"""Errors users see. Each carries a one-line cause and says how to fix it; the CLI maps them to exit codes."""

from __future__ import annotations


def one_line(message: BaseException | str) -> str:
    """A cause as one line: its non-empty lines joined with "; " (the CLI's stderr line, the server's JSON error)."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text or (type(message).__name__ if isinstance(message, BaseException) else "failed")


class LivoError(Exception):
    """A failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class ConfigError(LivoError):
    """Bad input: a config, a principles file, a CLI argument (exit code 2)."""

    exit_code = 2


class StoreError(LivoError):
    """The object store is unreachable, refused our credentials, or lacks an object or bucket."""


class DataError(LivoError):
    """A dataset is damaged in storage (a shard's sha256 differs from its manifest): an environment fault (exit 1)."""


class InvalidDataError(DataError, ConfigError):
    """Data given to a command is unusable as input (absent, empty, malformed, wrong schema, undecodable image,
    other principle set): a `DataError` that exits with the bad-input code 2, like `ConfigError`."""


class JudgeUnavailable(LivoError):
    """A judge cannot run here (usually: its weights are absent). The message says how to supply them."""

    exit_code = 2


class ModelNotFound(ConfigError):
    """A model name or version that is not registered in the object store (bad input, exit 2; HTTP 404)."""

    http_status = 404


class UnknownPrinciple(ConfigError):
    """A principle id that the loaded version's principle set does not define (bad input, exit 2; HTTP 400)."""

    http_status = 400


class VersionNotVerified(LivoError):
    """A registered version failed lineage verification, so it is not loaded (exit 1; HTTP 409).

    `mismatches` holds `(subject, detail)` pairs as `livo lineage verify` reports them."""

    http_status = 409

    def __init__(self, message: str, mismatches: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.mismatches = list(mismatches or [])


class BaseModelMismatch(ConfigError):
    """The base model loaded for a version is not the one it was trained and evaluated on: its fingerprint differs
    from the lineage's (exit 2; HTTP 409). `expected` is the recorded fingerprint, `actual` the computed one."""

    http_status = 409

    def __init__(self, message: str, *, expected: str = "", actual: str = ""):
        super().__init__(message)
        self.expected, self.actual = expected, actual

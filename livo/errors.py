"""Errors users see. Each carries a one-line cause and says how to fix it; the CLI maps them to exit codes."""

from __future__ import annotations


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

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
    """A dataset is missing, empty, corrupted or does not match what the caller expects."""


class JudgeUnavailable(LivoError):
    """A judge cannot run here (usually: its weights are absent). The message says how to supply them."""

    exit_code = 2

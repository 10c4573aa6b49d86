"""Structured logging: human-readable by default, one JSON object per line with `LIVO_LOG_FORMAT=json`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_CONFIGURED = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        return json.dumps(payload, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"[{record.levelname.lower()}] {record.name}: {record.getMessage()}" + (f" {extra}" if extra else "")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is now (test capture and CLI redirection swap it after configuration)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; we always follow sys.stderr instead
        pass


def configure_logging(json_format: bool | None = None, level: str | None = None) -> None:
    """Install one stderr handler on the `livo` logger (idempotent)."""
    global _CONFIGURED
    if json_format is None:
        json_format = os.environ.get("LIVO_LOG_FORMAT", "text") == "json"
    logger = logging.getLogger("livo")
    logger.handlers.clear()
    handler = _StderrHandler()
    handler.setFormatter(_JsonFormatter() if json_format else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("LIVO_LOG_LEVEL", "INFO"))
    logger.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    if not _CONFIGURED:
        configure_logging()
    return logging.getLogger(name if name.startswith("livo") else f"livo.{name}")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    """Log `event` with key/value fields (kept as separate JSON keys in JSON mode)."""
    logger.log(level, event, extra={"fields": fields})

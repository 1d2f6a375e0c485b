"""Structured JSON logging.

One JSON object per line on stderr. ``get(name)`` returns a logger under ``lockgate.``;
pass structured fields with ``extra={"fields": {...}}``. Values that look like JWTs or that
sit under secret-ish keys are redacted before they are written, as a second line of defence:
code should never hand a secret to a logger in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_SECRET_KEYS = re.compile(r"(?i)(secret|password|token|authorization|key|credential)")
REDACTED = "[redacted]"
_CORE_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})


def redact(value: object, key: str = "") -> object:
    """Return ``value`` with secrets and JWT-shaped strings replaced by ``[redacted]``."""
    if key and _SECRET_KEYS.search(key) and not key.endswith(("_id", "_name", "_age")):
        return REDACTED
    if isinstance(value, str):
        return _JWT_RE.sub(REDACTED, value)
    if isinstance(value, dict):
        return _redact_fields(value)
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_fields(fields: dict[object, object]) -> dict[object, object]:
    return {k: redact(v, str(k)) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[object, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _JWT_RE.sub(REDACTED, record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in _redact_fields(fields).items():
                # A field never overwrites ts/level/logger/msg: a value that came from a
                # request must not be able to forge what the line says about itself.
                entry[f"field_{k}" if k in _CORE_KEYS else k] = v
        if record.exc_info:
            entry["exc"] = _JWT_RE.sub(REDACTED, self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    """Send ``lockgate.*`` logs to ``stream`` (stderr) as JSON lines."""
    root = logging.getLogger("lockgate")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"lockgate.{name}")

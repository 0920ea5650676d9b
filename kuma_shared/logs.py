"""Structured logs for kuma-cp and kuma-dp alike (one format in one journal): what happened, and to what
(mesh, dataplane, zone, type, version) as key=value fields.

Call sites pass context with `extra={...}` (never a LogRecord attribute such as `name`: logging refuses
those, so the resource name goes in `resource`); the formatter prints every non-standard record attribute, so
`log.info("resource created", extra={"type": "Mesh", "resource": "default"})` becomes
`2026-11-26T10:00:00.000Z info kuma.api resource created type=Mesh resource=default` (or one JSON object a line).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        for k, v in _fields(record).items():
            text = str(v)
            parts.append(f"{k}={json.dumps(text) if (' ' in text or not text or '=' in text) else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        doc.update({k: v if isinstance(v, int | float | bool) or v is None else str(v)
                    for k, v in _fields(record).items()})
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


# Libraries logged only from warning up: aiohttp's access log repeats what the API middleware logs with more
# context; asyncio's debug chatter is not ours.
QUIET = ("aiohttp.access", "asyncio")


def setup(level: str = "info", fmt: str = "text", *, quiet: tuple[str, ...] = QUIET) -> None:
    """Log to stderr at `level` in `fmt` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


class ErrorLog:
    """Logs a recurring error at most once per `interval` seconds per key (e.g. (mesh, kind of error)), with
    how many were suppressed since the last line: a fault that hits every proxy on every pass, or every
    accept() of a flooded listener, must not become megabytes of identical lines."""

    def __init__(self, logger: logging.Logger, *, interval: float = 30.0, max_keys: int = 10_000) -> None:
        self.logger, self.interval, self.max_keys = logger, interval, max_keys
        self._seen: dict[object, tuple[float, int]] = {}  # key -> (time of the last line, suppressed since)

    def report(self, key: object, message: str, *, error: BaseException | None = None,
               extra: dict[str, Any] | None = None, traceback: bool = True, level: int = logging.ERROR) -> bool:
        """Log `message` unless `key` was logged less than `interval` ago; returns whether it was logged."""
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is None and len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (now, 0)
        fields = dict(extra or {})
        if error is not None:
            fields["error"] = str(error) or type(error).__name__
        if seen is not None and seen[1]:
            fields["suppressed"] = seen[1]  # the same error, not logged since the previous line
        exc_info = (type(error), error, error.__traceback__) if error is not None and traceback else None
        self.logger.log(level, message, extra=fields, exc_info=exc_info)
        return True

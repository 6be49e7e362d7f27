"""Logging for every service: JSON lines with trace ids, and a filter that masks anything that
looks like a raw ID number or mobile number, whatever the code that logged it intended.

Each record is one JSON object on one line (python-json-logger):

    {"time": "2025-01-02T03:04:05.678+00:00", "level": "INFO", "service": "display",
     "logger": "services.display", "message": "...", "trace_id": "4bf9...", "span_id": "00f0..."}

`trace_id` / `span_id` (hex, as OpenTelemetry exports them) are those of the span current when
the record was made, present only when that span is recording (sampled), so a log line can be
joined with its trace. An exception adds `exception`, a stack `stack`; `extra=` fields are
added as they are (strings redacted). `HEALTHCODE_LOG_FORMAT=text` gives one readable line per
record instead, for people at a terminal.

The filter is the second line of defence: code logs keys, masked forms and counts in the first
place. It rewrites the formatted message before any formatter sees it, so arguments are covered
too, and so are exception texts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonFormatter

from services._common.config import ConfigError

# 18-character resident ID numbers (17 digits + digit/X) and 11-digit mainland mobiles, not
# embedded in longer digit runs (so timestamps and counters survive).
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{2})\d{14}([\dXx]{2})(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")

LOG_FORMATS = ("json", "text")
LOG_FORMAT_ENV = "HEALTHCODE_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(service)s] %(message)s"

# What the filter stamps on a record; never copied again as an `extra` field.
_STAMPED = ("service", "trace_id", "span_id")
_NOT_EXTRA = frozenset((*RESERVED_ATTRS, *_STAMPED, "taskName"))


def redact(text: str) -> str:
    """Mask raw-looking ID numbers and phone numbers in `text`."""
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 14 + m.group(2), text)
    return _PHONE.sub(lambda m: m.group(1) + "****" + m.group(2), text)


class RedactingFilter(logging.Filter):
    """Masks identifiers in the final message and exception text, and stamps the service name
    and the current trace and span ids on every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.service = self.service
        # Filters run in the thread that logs, so the current span is the caller's.
        span = trace.get_current_span()
        context = span.get_span_context()
        if span.is_recording() and context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True


def _text(formatted: str | list[str]) -> str:
    # python-json-logger may give a list of lines (its *_as_array options, not used here).
    return formatted if isinstance(formatted, str) else "\n".join(formatted)


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class JsonLogFormatter(JsonFormatter):
    """One JSON object per record: time, level, service, logger, message, trace_id, span_id
    (when there is a recording span), then exception, stack and any `extra=` fields."""

    def __init__(self) -> None:
        # Chinese text (names of rules, places) stays readable in the file.
        super().__init__(json_ensure_ascii=False)

    def formatException(self, ei: Any) -> str:
        # The filter has usually redacted exc_text already; this covers a record that never
        # passed it.
        return redact(_text(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return redact(_text(super().formatStack(stack_info)))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname
        log_data["service"] = getattr(record, "service", "")
        log_data["logger"] = record.name
        log_data["message"] = redact(record.message)
        for key in ("trace_id", "span_id"):
            value = getattr(record, key, None)
            if value:
                log_data[key] = value
        exception = message_dict.pop("exc_info", None)
        stack = message_dict.pop("stack_info", None)
        if exception:
            log_data["exception"] = redact(str(exception))
        if stack:
            log_data["stack"] = redact(str(stack))
        # A dict logged as the message, then `extra=` fields: never over the fields above.
        extra: dict[str, Any] = {}
        merge_record_extra(record, extra, reserved=_NOT_EXTRA)
        for source in (message_dict, extra):
            for key, value in source.items():
                log_data.setdefault(key, _redacted(value))


class TextLogFormatter(logging.Formatter):
    """One readable line per record (HEALTHCODE_LOG_FORMAT=text), the trace id appended."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact(super().formatStack(stack_info))

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "service"):
            record.service = ""
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line} trace_id={trace_id}" if trace_id else line


def log_format(env: Mapping[str, str] | None = None) -> str:
    """HEALTHCODE_LOG_FORMAT: `json` (the default) or `text`."""
    env = os.environ if env is None else env
    chosen = (env.get(LOG_FORMAT_ENV, "") or "json").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ConfigError(f"{LOG_FORMAT_ENV}: {chosen!r}; use one of {LOG_FORMATS}")
    return chosen


def formatter(kind: str) -> logging.Formatter:
    """The formatter of a log format (`json` or `text`)."""
    return TextLogFormatter() if kind == "text" else JsonLogFormatter()


def setup_logging(service: str, level: str = "INFO", kind: str | None = None) -> None:
    """Configure the root logger once for a service process: stderr, redacted, JSON lines
    unless `kind` (or HEALTHCODE_LOG_FORMAT) says `text`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind or log_format()))
    handler.addFilter(RedactingFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

"""Logging for every service: one format, and a filter that masks anything that looks like a raw
ID number or mobile number, whatever the code that logged it intended.

The filter is the second line of defence: code logs keys, masked forms and counts in the first
place. It rewrites the formatted message, so arguments are covered too.
"""

from __future__ import annotations

import logging
import re
import sys

# 18-character resident ID numbers (17 digits + digit/X) and 11-digit mainland mobiles, not
# embedded in longer digit runs (so timestamps and counters survive).
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{2})\d{14}([\dXx]{2})(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(service)s] %(message)s"


def redact(text: str) -> str:
    """Mask raw-looking ID numbers and phone numbers in `text`."""
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 14 + m.group(2), text)
    return _PHONE.sub(lambda m: m.group(1) + "****" + m.group(2), text)


class RedactingFilter(logging.Filter):
    """Masks identifiers in the final message and stamps the service name on every record."""

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
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    """Configure the root logger once for a service process (stderr, redacted)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

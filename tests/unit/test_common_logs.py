"""Service logs: JSON lines with the trace and span ids of the current span, identifiers
redacted before formatting (message, arguments, exceptions, extra fields); text on request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from services._common.config import ConfigError
from services._common.logs import RedactingFilter, formatter, log_format

ID_NUMBER = "11010519491231002X"
PHONE = "13800138000"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter("display"))
    logger = logging.getLogger("test.logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)
    logger.propagate = True


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_per_record_with_the_trace_of_the_current_span(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(formatter("json"))
    tracer = TracerProvider().get_tracer("test")
    logger.info("outside any span")
    with tracer.start_as_current_span("Show") as span:
        logger.warning("inside %s", "a span")
        context = span.get_span_context()
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("Scan"):
        logger.info("inside a span that is not recorded")
    outside, inside, not_recorded = _records(stream)
    assert outside.keys() == {"time", "level", "service", "logger", "message"}
    assert outside["service"] == "display" and outside["logger"] == "test.logs"
    assert outside["level"] == "INFO" and outside["time"].endswith("+00:00")
    assert inside["message"] == "inside a span" and inside["level"] == "WARNING"
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in not_recorded and "span_id" not in not_recorded


def test_identifiers_are_masked_in_the_message_exception_and_extra_fields(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(formatter("json"))
    logger.info("registered %s with %s", ID_NUMBER, PHONE, extra={"phone": PHONE, "n": 3})
    try:
        raise ValueError(f"bad row {ID_NUMBER.lower()} / {PHONE}")
    except ValueError:
        logger.exception("import failed for 居民 %s", ID_NUMBER)
    text = stream.getvalue()
    for raw in (ID_NUMBER, ID_NUMBER.lower(), PHONE):
        assert raw not in text
    registered, failed = _records(stream)
    assert registered["message"] == "registered 11**************2X with 138****8000"
    assert registered["phone"] == "138****8000" and registered["n"] == 3
    assert "居民" in failed["message"]  # readable, not \\u-escaped
    assert "ValueError: bad row 11**************2x / 138****8000" in failed["exception"]


def test_text_logs_for_a_terminal(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(formatter("text"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("Show") as span:
        logger.info("shown to %s", PHONE)
        trace_id = f"{span.get_span_context().trace_id:032x}"
    line = stream.getvalue().strip()
    assert line.endswith(f"INFO test.logs [display] shown to 138****8000 trace_id={trace_id}")


def test_the_log_format_setting() -> None:
    assert log_format({}) == "json"
    assert log_format({"HEALTHCODE_LOG_FORMAT": "text"}) == "text"
    assert log_format({"HEALTHCODE_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ConfigError, match="HEALTHCODE_LOG_FORMAT"):
        log_format({"HEALTHCODE_LOG_FORMAT": "xml"})

"""The `alice` logger: its own level and handler, since BentoML leaves the root at WARNING."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

LOGGER_NAME = "alice"
# Where BentoML logs a failed `/generate` call ("Exception on /generate [POST]", with its traceback).
BENTOML_API_LOGGER = "bentoml._internal.server.http_app"


def configure_logging(level: str = "INFO") -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(getattr(handler, "_alice", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._alice = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # BentoML's root handlers would print it a second time
    api_logger = logging.getLogger(BENTOML_API_LOGGER)
    if not any(isinstance(existing, DropRejectedInput) for existing in api_logger.filters):
        api_logger.addFilter(DropRejectedInput())
    return logger


class DropRejectedInput(logging.Filter):
    """Drops BentoML's ERROR record of a `/generate` body that failed validation.

    The client already has its 400 naming the field; the record's traceback quotes the
    rejected input (the prompt too), and a bad request is no server error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ValidationError))

"""The `alice` logger: its own level and handler, since BentoML leaves the root at WARNING."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "alice"


def configure_logging(level: str = "INFO") -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(getattr(handler, "_alice", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._alice = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # BentoML's root handlers would print it a second time
    return logger

"""Whether the default model is loaded, and if not why: what `/readyz` and `/health` tell.

The warm-up sets it; a later load of the default model (a request's, once memory is back)
clears a failed warm-up's error, so the server becomes ready without a restart.
"""

from __future__ import annotations

import logging

from alice.metrics import Summary

logger = logging.getLogger("alice")


class Readiness:
    def __init__(self, default_model: str, summary: Summary) -> None:
        self.default_model = default_model
        self.ready = False
        self.load_error: str | None = None  # why the warm-up failed, for `/health`
        self._summary = summary

    def model_loaded(self, name: str, seconds: float) -> None:
        """The engine's word that it loaded a model (any load, the warm-up's or a request's)."""
        self._summary.model_loaded(name, seconds)
        if name == self.default_model and self.load_error:  # a failed warm-up, fixed since
            self.load_error = None
            self.ready = True
            logger.info("default model %s loaded after all; ready", name)

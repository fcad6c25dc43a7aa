"""What a server process serves with: its settings, read once and handed to all that need them,
and the engine its runtime draws with.

BentoML reads the service's decorator when it imports service.py (concurrency, TLS), builds the
API-key middleware when its app takes the first event, and only then creates the service
instance, which builds the runtime. Each used to read the environment (and ALICE_CONFIG's file)
for itself, so a file edited in between could give the key check other keys than the runtime's.
Now the first read is kept: a bad setting is reported at the start, by every later ask, with
the same message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from alice.config import ConfigError, Settings, load_settings
from alice.engine.engine import Engine
from alice.serving.runtime import Runtime


class ServiceSetup:
    def __init__(self, read: Callable[[], Settings] = load_settings) -> None:
        self._read = read
        self._settings: Settings | None = None
        self._error: str | None = None  # a bad setting, as ConfigError said it
        self._engine: Engine | None = None  # None: the diffusers pipelines

    def settings(self) -> Settings:
        """The settings, read on the first ask; ConfigError naming the bad setting, at every ask."""
        if self._settings is None and self._error is None:
            try:
                self._settings = self._read()
            except ConfigError as exc:
                self._error = str(exc)
        if self._error is not None:
            raise ConfigError(self._error)
        assert self._settings is not None
        return self._settings

    def settings_or_defaults(self) -> Settings:
        """The settings, or every default when one is bad: for what BentoML takes at import
        (the decorator), before the start can report the bad setting."""
        try:
            return self.settings()
        except ConfigError:
            return Settings.model_construct()  # the defaults, without reading the environment again

    def runtime(self) -> Runtime:
        """A runtime on these settings (not started yet), drawing with the engine handed in."""
        return Runtime(self.settings(), engine=self._engine)

    @contextlib.contextmanager
    def serving_with(self, settings: Settings, engine: Engine | None = None) -> Iterator[None]:
        """For the block, serve with `settings` and `engine` instead of the environment's as first
        read and the diffusers pipelines: a process that starts the service more than once
        (the in-process tests, each in an environment of its own) hands each start its own."""
        saved = self._settings, self._error, self._engine
        self._settings, self._error, self._engine = settings, None, engine
        try:
            yield
        finally:
            self._settings, self._error, self._engine = saved

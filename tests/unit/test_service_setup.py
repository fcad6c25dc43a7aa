"""A server reads its settings once and hands the same ones down; handlers find the runtime
on their app's state."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.requests import Request

from alice.config import ConfigError, load_settings
from alice.http.handling import get_runtime, serve_runtime
from alice.serving.service_setup import ServiceSetup


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ALICE_") or key == "CIVITAI_API_KEY":
            monkeypatch.delenv(key)


def test_the_settings_are_read_once(monkeypatch):
    monkeypatch.setenv("ALICE_API_KEYS", "first")
    setup = ServiceSetup()
    settings = setup.settings_or_defaults()  # the decorator's ask, at import
    monkeypatch.setenv("ALICE_API_KEYS", "second")  # an edit after the start: not seen
    assert setup.settings() is settings and settings.api_keys == ["first"]


def test_a_bad_setting_is_reported_at_every_ask(monkeypatch):
    monkeypatch.setenv("ALICE_QUEUE_SIZE", "lots")
    setup = ServiceSetup()
    assert setup.settings_or_defaults().queue_size == 16  # the decorator goes on with the defaults
    monkeypatch.setenv("ALICE_QUEUE_SIZE", "3")  # not read again: the start reports what was read
    for _ in range(2):  # the key check, then the service instance
        with pytest.raises(ConfigError, match=r"queue_size \(ALICE_QUEUE_SIZE\)"):
            setup.settings()


def test_serving_with_hands_one_start_its_own_settings(monkeypatch):
    setup = ServiceSetup()
    read = setup.settings()
    monkeypatch.setenv("ALICE_API_KEYS", "a-key")
    with setup.serving_with(load_settings()):
        assert setup.settings().api_keys == ["a-key"]
    assert setup.settings() is read


def request_to(app: FastAPI) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "app": app})


def test_handlers_get_the_runtime_from_their_app_and_a_clear_error_without_one():
    app = FastAPI()
    with pytest.raises(RuntimeError, match="no runtime on the app's state"):
        get_runtime(request_to(app))
    runtime = object()  # what the service put there is what the handler gets
    serve_runtime(app, runtime)  # type: ignore[arg-type]
    assert get_runtime(request_to(app)) is runtime
    serve_runtime(app, None)  # shut down
    with pytest.raises(RuntimeError, match="has not started"):
        get_runtime(request_to(app))

"""Named keys and roles as the operator writes them: `name=key` entries, a keys file, bare keys
named by a hash (never the key), refusals that name the line but never quote a key."""

from __future__ import annotations

import logging

import pytest

from alice.config import ConfigError, load_settings
from alice.http.auth import warn_if_open_beyond_loopback
from alice.http.rate_limits import RateLimiter
from tests.unit.test_config import clean_env  # noqa: F401  (autouse: no ALICE_* from outside)


def test_names_roles_and_a_keys_file(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# the team\nann: ann-secret-1\n\nadmin root: root-secret-1\n")
    monkeypatch.setenv("ALICE_API_KEYS", "bob=bob-secret-1,padded-base64==")
    monkeypatch.setenv("ALICE_ADMIN_KEYS", "ops=ops-secret-1")
    monkeypatch.setenv("ALICE_API_KEYS_FILE", str(keys))
    ring = load_settings().keyring()
    assert [(key.name, key.admin) for key in ring][:2] == [("bob", False), (ring[1].name, False)]
    assert ring[1].secret == "padded-base64==" and ring[1].name.startswith("key-")  # base64's `=`: a bare key
    assert {(key.name, key.secret, key.admin) for key in ring[2:]} == {
        ("ops", "ops-secret-1", True), ("ann", "ann-secret-1", False), ("root", "root-secret-1", True)}
    assert "secret" not in repr(ring) and "padded" not in repr(ring)


@pytest.mark.parametrize("line", ["ann ann-secret-1", "two words: k3y-s3cret", "admin: k3y-s3cret", "ann:"])
def test_a_bad_line_of_the_keys_file_is_named_without_its_key(monkeypatch, tmp_path, line):
    keys = tmp_path / "keys"
    keys.write_text(f"ok: fine-secret-1\n{line}\n")
    monkeypatch.setenv("ALICE_API_KEYS_FILE", str(keys))
    with pytest.raises(ConfigError, match="line 2") as refused:
        load_settings().keyring()
    assert "s3cret" not in str(refused.value) and "ann-secret" not in str(refused.value)


def test_a_name_or_key_given_twice_is_refused(monkeypatch):
    monkeypatch.setenv("ALICE_API_KEYS", "ann=secret-one-1,ann=secret-two-2")
    with pytest.raises(ConfigError, match="'ann' is given twice"):
        load_settings().keyring()
    monkeypatch.setenv("ALICE_API_KEYS", "ann=secret-one-1")
    monkeypatch.setenv("ALICE_ADMIN_KEYS", "root=secret-one-1")
    with pytest.raises(ConfigError, match="one key is given twice") as refused:
        load_settings().keyring()
    assert "secret-one" not in str(refused.value)


def test_the_rate_limit_reads_as_a_budget_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("ALICE_RATE_LIMIT", "60/minute")
    assert load_settings().rate_budget() == (60, 60.0)
    monkeypatch.setenv("ALICE_RATE_LIMIT", "60 a minute")
    with pytest.raises(ConfigError, match="ALICE_RATE_LIMIT"):
        load_settings()


def test_a_keys_budget_is_spent_at_once_and_comes_back_steadily(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("alice.http.rate_limits.time.monotonic", lambda: clock[0])
    limiter = RateLimiter((3, 60.0))  # 3/minute: one back every 20 s
    assert [limiter.wait_s("ann") for _ in range(4)] == [0, 0, 0, 20]
    assert limiter.wait_s("bob") == 0  # each key its own
    clock[0] += 20
    assert limiter.wait_s("ann") == 0 and limiter.wait_s("ann") == 20


def test_the_start_says_how_many_keys_and_admins_never_which(caplog):
    with caplog.at_level(logging.INFO, logger="alice.auth"):
        warn_if_open_beyond_loopback(["ann", "root"], ["127.0.0.1"], admins=1)
    assert "2 configured, 1 admin" in caplog.text

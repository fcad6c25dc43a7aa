"""Settings: environment over YAML file, clear errors naming the setting."""

from __future__ import annotations

import pytest

from alice.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ALICE_") or key == "CIVITAI_API_KEY":
            monkeypatch.delenv(key)


def test_defaults():
    settings = load_settings()
    assert settings.api_keys == [] and settings.default_model == "alice-demo"
    assert settings.queue_size == 16 and settings.request_timeout_s < 600


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("ALICE_API_KEYS", " one, two ,,")
    monkeypatch.setenv("ALICE_PUBLIC_URL", "https://alice.example.com/")
    monkeypatch.setenv("ALICE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIVITAI_API_KEY", "secret-token")
    settings = load_settings()
    assert settings.api_keys == ["one", "two"]
    assert settings.public_url == "https://alice.example.com"
    assert settings.data_dir == tmp_path
    assert settings.civitai_api_key.get_secret_value() == "secret-token"
    view = settings.public_view()
    assert "secret-token" not in str(view) and "one" not in str(view["api_keys"])
    assert "secret-token" not in repr(settings) and "'one'" not in repr(settings)


def test_yaml_file_with_environment_winning(monkeypatch, tmp_path):
    config = tmp_path / "alice.yaml"
    config.write_text("queue_size: 3\nmax_pixels: 65536\napi_keys: [a, b]\n")
    monkeypatch.setenv("ALICE_CONFIG", str(config))
    monkeypatch.setenv("ALICE_QUEUE_SIZE", "5")
    settings = load_settings()
    assert (settings.queue_size, settings.max_pixels, settings.api_keys) == (5, 65536, ["a", "b"])


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"ALICE_QUEUE_SIZE": "-1"}, "queue_size (ALICE_QUEUE_SIZE)"),
        ({"ALICE_QUEUE_SIZE": "lots"}, "queue_size (ALICE_QUEUE_SIZE)"),
        ({"ALICE_DEVICE": "tpu"}, "device (ALICE_DEVICE)"),
        ({"ALICE_PUBLIC_URL": "alice.local"}, "must start with http"),
        ({"ALICE_QUEUESIZE": "3"}, "unknown setting ALICE_QUEUESIZE"),
    ],
)
def test_bad_settings_name_the_setting(monkeypatch, env, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=None) as error:
        load_settings()
    assert words in str(error.value)


def test_bad_yaml_key_and_file(monkeypatch, tmp_path):
    config = tmp_path / "alice.yaml"
    config.write_text("queue_sise: 3\n")
    monkeypatch.setenv("ALICE_CONFIG", str(config))
    with pytest.raises(ConfigError, match="unknown setting 'queue_sise'"):
        load_settings()
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings()
    monkeypatch.setenv("ALICE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()


def test_the_shared_queue_settings(monkeypatch):
    """ALICE_DATABASE_URL carries a password: never shown; anything but PostgreSQL is refused."""
    monkeypatch.setenv("ALICE_DATABASE_URL", "postgresql://alice:db-secret@db/alice")
    monkeypatch.setenv("ALICE_REPLICA_NAME", "gpu0")
    monkeypatch.setenv("ALICE_JOB_LEASE_S", "5")
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://alice:db-secret@db/alice"
    assert (settings.replica_name, settings.job_lease_s) == ("gpu0", 5)
    assert "db-secret" not in str(settings.public_view()) and "db-secret" not in repr(settings)
    monkeypatch.setenv("ALICE_DATABASE_URL", "mysql://alice@db/alice")
    with pytest.raises(ConfigError, match=r"database_url \(ALICE_DATABASE_URL\).*postgresql://"):
        load_settings()
    monkeypatch.setenv("ALICE_DATABASE_URL", "")
    monkeypatch.setenv("ALICE_REPLICA_NAME", "../gpu0")  # it names a folder of downloads
    with pytest.raises(ConfigError, match=r"replica_name \(ALICE_REPLICA_NAME\)"):
        load_settings()

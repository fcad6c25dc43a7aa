"""Operator settings: `ALICE_*` environment variables over an optional YAML file.

`ALICE_CONFIG=/path/alice.yaml` names the file; its keys are the field names below
(`api_keys`, `queue_size`, ...). The environment wins over the file. Everything is
validated once at start, and a bad value stops the server with a message naming the
setting, its environment variable and what is allowed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, IPvAnyNetwork, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "ALICE_"
CONFIG_FILE_ENV = "ALICE_CONFIG"


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


class Settings(BaseSettings):
    """Every operator setting, each with an `ALICE_*` environment variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="API keys clients must send (comma-separated in ALICE_API_KEYS; `name=key` names one for logs "
        "and metrics); empty = open. With ALICE_ADMIN_KEYS set these are user keys: each sees its own jobs and images.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Admin keys (comma-separated, `name=key` as in ALICE_API_KEYS); set = roles on: only these manage "
        "models and see every key's jobs and images; unset = every key does everything (one household).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of keys, one `name: key` a line (`admin name: key` for an admin key; # comments), "
        "added to ALICE_API_KEYS and ALICE_ADMIN_KEYS: keys out of the environment.",
    )
    max_queued_per_key: int = Field(
        0, ge=0, le=10_000, description="Most jobs one key may have waiting; more get 429 (0 = no limit but the queue's)."
    )
    rate_limit: str | None = Field(
        None,
        pattern=r"^\d+/(second|minute|hour)$",
        description="Most requests that change something (POST, PUT, DELETE) one key may make, e.g. 60/minute; "
        "more get 429 with Retry-After; unset = no limit.",
    )
    header_timeout_s: float = Field(
        10, gt=0, le=300,
        description="A connection that has not sent a request's headers this long after opening (or after its last "
        "answer) is closed, so slow or idle connections cannot hold the server's sockets.",
    )
    public_url: str | None = Field(
        None, description="Base URL for handed-out image URLs when behind a proxy, e.g. https://alice.example.com."
    )
    tls_certfile: Path | None = Field(
        None, description="Serve HTTPS with this PEM certificate (chain); `alice tls init` makes one for a LAN."
    )
    tls_keyfile: Path | None = Field(None, description="The certificate's private key (PEM).")
    data_dir: Path = Field(
        Path("~/.local/share/alice"), description="Images, job records and downloads in progress."
    )
    database_url: SecretStr | None = Field(
        None,
        repr=False,
        description="postgresql://user:password@host/db: replicas share one job queue there (see docs/deploy.md); "
        "unset = job records in SQLite in the data folder, for one server.",
    )
    replica_name: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This server's name in the job records it runs (with ALICE_DATABASE_URL); "
        "unset = host name and process id (set a stable one: downloads in progress resume under it).",
    )
    job_lease_s: float = Field(
        30,
        ge=1,
        le=3600,
        description="With ALICE_DATABASE_URL: a running job whose server has not renewed its lease for this "
        "long (the server died) is marked failed.",
    )
    default_model: str = Field("alice-demo", description="Model served when a request names none.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto = bf16 from Ampere (capability 8.0) on, fp16 on older GPUs, fp32 on the CPU."
    )
    model_cache_gb: float = Field(
        0,
        ge=0,
        description="Most memory the weights of models kept loaded may take (least recently used unloaded "
        "first); 0 = what fits: the card less its CUDA context and a generation's working memory, half the "
        "RAM for weights kept there.",
    )
    attention_slicing: bool | Literal["auto"] = Field(
        "auto",
        description="Attention in slices through a slower processor than SDPA's; "
        "auto = off (SDPA already saves the memory).",
    )
    vae_tiling: bool | Literal["auto"] = Field(
        "auto", description="Decode images in tiles; auto = only images whose whole decode would not fit the card."
    )
    cpu_offload: Literal["auto", "none", "model", "group", "sequential"] = Field(
        "auto",
        description="Keep weights in RAM and move them to the GPU when used (model), block by block "
        "(group: the transformer families; SD's UNets take model offload for it) or layer by layer "
        "(sequential); auto = only for models whose weights and working memory do not fit the card.",
    )
    quantize: Literal["auto", "none", "nf4"] = Field(
        "auto",
        description="Quantize a transformer family's 16-bit transformer to NF4 as it loads (bitsandbytes; a CUDA card "
        "of compute capability 6.0+); auto = only where its 16 bits would stream from RAM every step or fit nowhere "
        "(with ALICE_CPU_OFFLOAD=auto). "
        "none keeps 16 bits (NF4 changes the images a little); a GGUF or NF4 file is used as it is.",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels_last memory format for the UNet on CUDA (faster convolutions through tensor-core "
        "kernels; not under sequential offload); auto = on cards with tensor cores (Volta and later, not GTX 16xx)."
    )
    compile_unet: bool = Field(False, description="torch.compile the UNet (slow first image, faster after).")
    max_pixels: int = Field(
        1024 * 1024, ge=64 * 64, le=4096 * 4096, description="Largest width x height a request may ask for."
    )
    max_images_per_request: int = Field(4, ge=1, le=16, description="Most images one request may ask for.")
    max_batch: int = Field(
        8,
        ge=1,
        le=64,
        description="Most images one pipeline call draws, for one request or for waiting requests with the same "
        "model and settings (more images per second); 1 = every image its own call. Fewer when larger images "
        "would not fit the memory kept for one image of ALICE_MAX_PIXELS.",
    )
    queue_size: int = Field(16, ge=0, le=10_000, description="Most jobs waiting behind the running one; more get 503.")
    request_timeout_s: float = Field(
        590, gt=0, le=86_400, description="Deadline of a job from submission; SAM gives up after 600 s."
    )
    image_retention_days: float = Field(30, gt=0, description="Images older than this are deleted.")
    image_retention_gb: float = Field(20, gt=0, description="Oldest images are deleted beyond this total size.")
    retention_sweep_interval_s: float = Field(600, ge=1, description="How often the retention sweep runs.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Level of the alice logger.")
    civitai_url: str = Field("https://civitai.com", description="CivitAI base URL.")
    civitai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("civitai_api_key", "CIVITAI_API_KEY"),
        description="CivitAI token (env CIVITAI_API_KEY).",
    )
    download_allowed_networks: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Non-public networks downloads may reach, e.g. a NAS: 192.168.1.0/24 (comma-separated CIDRs); "
        "by default loopback, LAN, link-local and other non-public addresses are refused.",
    )
    download_max_gb: float = Field(16, gt=0, description="Largest download (a file, or a repo's files together).")
    download_disk_reserve_gb: float = Field(
        2, ge=0, description="Free disk a download must leave (beyond room for its conversion and import)."
    )

    @field_validator("download_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [network.strip() for network in value.split(",") if network.strip()]
        if isinstance(value, list):  # 192.168.1.5/24 means its network, as in `ip addr`
            return [_network_or_text(network) for network in value]
        return value

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not text.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (the shared job queue runs on PostgreSQL)")
        return text

    @field_validator("public_url", "civitai_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("data_dir", "tls_certfile", "tls_keyfile", "api_keys_file")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value else None

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _no_rate(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("tls_certfile", "tls_keyfile", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init arguments; the environment overrides it.
        return env_settings, init_settings

    def public_view(self) -> dict[str, Any]:
        """The effective settings with secrets masked, for the settings page and logs."""
        view = self.model_dump(mode="json")
        view["api_keys"] = ["****"] * len(self.api_keys)
        view["admin_keys"] = ["****"] * len(self.admin_keys)
        view["civitai_api_key"] = "****" if self.civitai_api_key else None
        view["database_url"] = "****" if self.database_url else None
        return view


    def keyring(self) -> list[ApiKey]:
        """Every configured key with its name and role (ConfigError for a bad key file or a name
        or key given twice)."""
        return read_keyring(self)

    def rate_budget(self) -> tuple[int, float] | None:
        """ALICE_RATE_LIMIT as (requests, per seconds), None when unset."""
        if not self.rate_limit:
            return None
        count, _, unit = self.rate_limit.partition("/")
        return int(count), {"second": 1.0, "minute": 60.0, "hour": 3600.0}[unit]


@dataclass(frozen=True)
class ApiKey:
    """A configured key: `name` is what logs, metrics and job records carry (never the key)."""

    name: str
    secret: str = dataclasses.field(default="", repr=False)
    admin: bool = False


KEY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def read_keyring(settings: Settings) -> list[ApiKey]:
    entries = [(entry, False) for entry in settings.api_keys] + [(entry, True) for entry in settings.admin_keys]
    keys = [_named(entry, admin) for entry, admin in entries]
    if settings.api_keys_file:
        keys += _key_file(settings.api_keys_file)
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})[0]
        raise ConfigError(f"invalid setting api_keys: the key name '{twice}' is given twice")
    if len({key.secret for key in keys}) != len(keys):
        raise ConfigError("invalid setting api_keys: one key is given twice (as two names or two roles)")
    return keys


def _named(entry: str, admin: bool) -> ApiKey:
    """`name=key` names a key; a bare key is named by a short hash of itself (stable across a
    reordered list, never the key). A key whose `=` is base64's padding stays a bare key."""
    name, equals, secret = entry.partition("=")
    if equals and KEY_NAME.fullmatch(name) and len(secret) >= 8 and not secret.startswith("="):
        return ApiKey(name, secret, admin)
    return ApiKey(f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry, admin)


def _key_file(path: Path) -> list[ApiKey]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"ALICE_API_KEYS_FILE={path}: cannot read the file ({exc.strerror})") from None
    keys = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, colon, secret = line.partition(":")
        words, secret = label.split(), secret.strip()
        admin = len(words) == 2 and words[0] == "admin"
        if (not colon or not secret or len(words) != (2 if admin else 1) or not KEY_NAME.fullmatch(words[-1])
                or words == ["admin"]):  # `admin: key` would be a user key named admin: surely a slip
            # The line itself is never quoted: it holds a key.
            raise ConfigError(f"ALICE_API_KEYS_FILE={path}, line {number}: expected `name: key` or "
                              "`admin name: key` (a name of letters, digits, _ . -)")
        keys.append(ApiKey(words[-1], secret, admin))
    return keys


def _network_or_text(value: Any) -> Any:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return value  # refused by the field's type, with its message


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return "CIVITAI_API_KEY" if field == "civitai_api_key" else ENV_PREFIX + field.upper()


def load_settings() -> Settings:
    """Read and validate the settings, raising ConfigError with a message that names the bad one."""
    environ = os.environ
    file_values: dict[str, Any] = {}
    path = environ.get(CONFIG_FILE_ENV)
    if path:
        file_values = _read_yaml(Path(path))
    # Any other ALICE_* variable is a typo of a real setting: refuse it rather than ignore it.
    known = {env_name(name) for name in Settings.model_fields} | {CONFIG_FILE_ENV}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]}; known: {', '.join(sorted(known))}")
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}={path}: cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}={path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_FILE_ENV}={path}: the file must hold a mapping of setting: value")
    unknown = sorted(str(key) for key in data if key not in Settings.model_fields)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting '{unknown[0]}'; known: {', '.join(sorted(Settings.model_fields))}"
        )
    return data


def _describe(exc: ValidationError, path: str | None) -> str:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        where = f"{field} ({env_name(field)}{' or ' + path if path else ''})" if field in Settings.model_fields else field
        problems.append(f"invalid setting {where}: {error['msg']}")
    return "; ".join(problems)

"""Daemon settings: a TOML file (default ``/etc/buildingd/buildingd.toml``) overridden by
``BUILDINGD_*`` environment variables (nested with ``__``). Every field has a working default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("/etc/buildingd/buildingd.toml")
# The demo building shipped in the repository (site.yaml, devices/, policies/).
REPO_SITE = Path(__file__).resolve().parent.parent


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given inline or in a file (systemd credentials: ``$CREDENTIALS_DIRECTORY/...``)."""
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    return value.get_secret_value() if value is not None else None


class MqttSettings(Section):
    """MQTT broker. ``enabled`` with no ``host`` starts the embedded amqtt broker on 127.0.0.1."""

    enabled: bool = False
    host: str | None = None  # None: embedded broker
    port: int = Field(default=1883, ge=0, le=65535)  # 0 for the embedded broker: a free port
    client_id: str | None = None  # default: buildingd-<site>
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    topic_prefix: str = "buildingd"  # topics are <prefix>/<site>/...
    qos_readings: Literal[0, 1, 2] = 0
    qos_commands: Literal[0, 1, 2] = 1
    qos_events: Literal[0, 1, 2] = 1
    bus: bool = False  # carry the agent bus over MQTT instead of in-process
    homeassistant_discovery: bool = False
    homeassistant_prefix: str = "homeassistant"
    reconnect_max_s: float = Field(default=60.0, gt=0)


class InfluxSettings(Section):
    """InfluxDB 2.x write API (also InfluxDB 3, VictoriaMetrics). Off: local line-protocol files."""

    enabled: bool = False
    url: str = "http://127.0.0.1:8086"
    org: str = "buildingd"
    bucket: str = "buildingd"
    token: SecretStr | None = None
    token_file: Path | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)  # backoff ceiling while the server is away
    gzip: bool = True
    buffer_max_mb: float = Field(default=200.0, gt=0)  # store-and-forward bound on disk
    local_max_mb: float = Field(default=100.0, gt=0)  # local line-protocol files when disabled


class HttpSettings(Section):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=8750, ge=0, le=65535)
    token_file: Path | None = None  # bearer token for write endpoints


class BleSettings(Section):
    """BLE adapters. ``auto``: passive scanning where BlueZ offers it (an advertisement monitor:
    BlueZ >= 5.56 started with experimental features), active scanning otherwise."""

    scanning: Literal["auto", "active", "passive"] = "auto"


class SimSettings(Section):
    """The simulated building behind ``driver: sim`` devices."""

    seed: int = 1
    start: str | None = None  # ISO date-time the simulation starts at; default: now
    weather: Literal["heating", "cooling", "mild"] | None = None  # default: from the date
    modbus_port: int | None = None  # serve Modbus sim devices on 127.0.0.1:<port> (0: free)
    # Serve ``simulated: true`` devices over their own protocols (MQTT, Modbus) so the real
    # drivers talk to the simulator; off, they are read from the model directly (virtual time:
    # ``buildingd evaluate`` and the simulated-time tests, where no network timer can run).
    protocols: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BUILDINGD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    site_dir: Path = REPO_SITE
    state_dir: Path = Path("/var/lib/buildingd")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    speed: float = Field(default=1.0, gt=0)  # simulated seconds per real second (sim only)
    duration_s: float | None = Field(default=None, gt=0)
    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    http: HttpSettings = HttpSettings()
    ble: BleSettings = BleSettings()
    sim: SimSettings = SimSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order is precedence: explicit arguments, then environment, then the TOML file.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path)
        return (init_settings, env_settings, toml)


_toml_path: Path | None = None


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Load settings from ``config`` (or the default path if it exists) plus the environment."""
    global _toml_path
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None and not path.exists():
        raise FileNotFoundError(f"settings file {path} does not exist")
    _toml_path = path
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    finally:
        _toml_path = None

"""Daemon settings: a TOML file (default ``/etc/buildingd/buildingd.toml``) overridden by
``BUILDINGD_*`` environment variables (nested with ``__``). Every field has a working default.
Invalid settings raise ``ConfigError`` located like the site files: ``file:line: key: message``."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from buildingd.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from buildingd.config.gateways import GatewayMap

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
    # The embedded broker (no ``host``): ``user:<argon2 hash>`` lines (None: anonymous, on
    # 127.0.0.1 only); retained payloads larger than max_payload_bytes, or past
    # max_retained_bytes in all, are not kept.
    broker_password_file: Path | None = None
    broker_max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    broker_max_retained_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
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
    # Lines wait in memory at most this long: what a SIGKILL can lose (the disk buffer holds
    # what the server did not take).
    flush_interval_s: float = Field(default=1.0, gt=0)
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
    BlueZ >= 5.55 run with ``--experimental``, Linux >= 5.10), active scanning otherwise."""

    scanning: Literal["auto", "active", "passive"] = "auto"


class BacnetSettings(Section):
    """The BACnet/IP client. ``address`` as bacpypes3 reads it: ``host`` (the default interface,
    UDP 47808), ``192.168.1.5/24`` (its mask gives the broadcast address for Who-Is) or
    ``127.0.0.1:47900``. Unset: ``host``, or a free port on 127.0.0.1 while every BACnet device
    of the site is simulated (the demo never binds the building network). On a routed network
    without a local BBMD, register as a foreign device with ``bbmd = "10.0.0.1:47808"``;
    ``who_is_to`` sends Who-Is there instead of broadcasting."""

    address: str | None = None
    device_instance: int = Field(default=4194302, ge=0, le=4194302)
    bbmd: str | None = None
    bbmd_ttl_s: int = Field(default=300, ge=30, le=65535)
    who_is_to: str | None = None


class SimSettings(Section):
    """The simulated building behind ``driver: sim`` devices."""

    seed: int = 1
    start: str | None = None  # ISO date-time the simulation starts at; default: now
    weather: Literal["heating", "cooling", "mild"] | None = None  # default: from the date
    modbus_port: int | None = None  # serve Modbus sim devices on 127.0.0.1:<port> (0: free)
    # Serve simulated BACnet devices on 127.0.0.1 from <port> up, one port each (0: free ports).
    bacnet_port: int | None = None
    # Serve ``simulated: true`` RTU devices over a real serial line: the daemon's end (the
    # devices' ``connection.port``) -> the simulator's end, e.g. the two ptys of
    # ``socat pty,raw,echo=0,link=/tmp/ttyA pty,raw,echo=0,link=/tmp/ttyB`` or a looped pair
    # of RS-485 adapters. Lines not listed are not simulated.
    modbus_rtu_ports: dict[str, str] = Field(default_factory=dict)
    # Serve ``simulated: true`` devices over their own protocols (MQTT, Modbus) so the real
    # drivers talk to the simulator; off, they are read from the model directly (virtual time:
    # ``buildingd evaluate`` and the simulated-time tests, where no network timer can run).
    protocols: bool = True


class GatewaySettings(Section):
    """Which of the site's gateways (site.yaml ``gateways:``) this process is; unset on a site
    that declares none (one process runs everything)."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class NatsSettings(Section):
    """The NATS JetStream cluster carrying the bus between the site's gateways
    (``buildingd/nats``). Each gateway has its own NATS user, limited to the site's subjects
    (``buildingd.nats.subjects.gateway_permissions``); the bus key (``bus_key_file``) seals
    the envelopes on top."""

    enabled: bool = False
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    replicas: int = Field(default=3, ge=1, le=5)  # of the site's command stream
    # Commands wait in the stream this long at most for their gateway (those with a reply_by
    # are refused once it has passed); publishes repeated within the window are de-duplicated.
    command_max_age_s: float = Field(default=24 * 3600.0, gt=0)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    # The coordinator lease (several candidates): renewed every third of this; a standby takes
    # over within about this long after the leader died (nats/lease.py).
    lease_ttl_s: float = Field(default=6.0, ge=1.0)
    # The site's key sealing bus envelopes (HMAC-SHA256, ``nats.seal``); the same file on every
    # gateway of the site. Default <state_dir>/bus.key, created (mode 0600) at the first start.
    bus_key_file: Path | None = None


def bus_key_path(settings: Settings) -> Path:
    return settings.nats.bus_key_file or settings.state_dir / "bus.key"


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
    bacnet: BacnetSettings = BacnetSettings()
    sim: SimSettings = SimSettings()
    gateway: GatewaySettings = GatewaySettings()
    nats: NatsSettings = NatsSettings()

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
    """Load settings from ``config`` (or the default path if it exists) plus the environment.
    Raises ``ConfigError`` naming the file and line (or the environment variable) of every
    problem."""
    global _toml_path
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None and not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError([ConfigProblem(str(path), None, "", f"settings file {what}")])
    _toml_path = path
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        text = _read_text(path)
        raise ConfigError(settings_problems(err, path, text, overrides)) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([toml_syntax_problem(str(path), err)]) from err
    except OSError as err:
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read file: {err}")]) from err
    except UnicodeDecodeError as err:
        why = "not UTF-8 text; save the file as UTF-8"
        line = bytes(err.object[: err.start]).count(b"\n") + 1
        raise ConfigError([ConfigProblem(str(path), line, "", why)]) from err
    finally:
        _toml_path = None


def secret_file_problems(settings: Settings, config: Path | None) -> list[ConfigProblem]:
    """Secret files the settings name (the HTTP token, the InfluxDB token, the NATS password)
    that cannot be read, located like any settings problem (environment variable, else the
    file's line)."""
    wanted = [(("http", "token_file"), settings.http.token_file)]
    if settings.influx.enabled:
        wanted.append((("influx", "token_file"), settings.influx.token_file))
    if settings.nats.enabled:
        wanted.append((("nats", "password_file"), settings.nats.password_file))
    out: list[ConfigProblem] = []
    for loc, secret in wanted:
        if secret is None:
            continue
        try:
            secret.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            out.append(located_problem(config, loc, f"cannot read {secret}: {why}"))
    return out


def gateway_id_problems(
    settings: Settings, gateways: GatewayMap, config: Path | None
) -> list[ConfigProblem]:
    """``[gateway] id`` against the site's gateways (site.yaml ``gateways:``)."""
    why = gateways.problem_with(settings.gateway.id)
    out = [] if why is None else [located_problem(config, ("gateway", "id"), why)]
    if not gateways.single and not settings.nats.enabled:
        why = "the site runs on several gateways: their bus needs [nats] enabled = true"
        out.append(located_problem(config, ("nats", "enabled"), why))
    return out


def located_problem(config: Path | None, loc: tuple[str, ...], message: str) -> ConfigProblem:
    """A problem with the setting at ``loc``, located like a validation error: the environment
    variable that set it, else its line in the settings file."""
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    key = ".".join(loc)
    var = _env_var_for(loc, {k.upper(): k for k in os.environ})
    if var is not None:
        return SourcedProblem(f"environment {var}", None, key, message)
    if path is not None:
        lines = toml_key_lines(_read_text(path) or "")
        return ConfigProblem(str(path), _line_of(lines, loc), key, message)
    return SourcedProblem("settings", None, key, message)


def _read_text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class SourcedProblem(ConfigProblem):
    """A settings problem that comes from no file (an environment variable, a command-line
    option): printed as ``source: key: message``, with no line to point at."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


def settings_problems(
    err: ValidationError,
    path: Path | None,
    text: str | None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[ConfigProblem]:
    """Locate every error of ``err``: the environment variable that set the key when there is
    one (it wins over the file), else the option given on the command line, else the file's
    line of the key (or of its section)."""
    env = {k.upper(): k for k in (os.environ if environ is None else environ)}
    lines = toml_key_lines(text) if text is not None else {}
    out: list[ConfigProblem] = []
    for e in err.errors(include_url=False):
        loc = tuple(str(part) for part in e["loc"])
        key = ".".join(loc)
        message = _message(e)
        var = _env_var_for(loc, env)
        if var is not None:
            out.append(SourcedProblem(f"environment {var}", None, key, message))
        elif overrides and loc and loc[0] in overrides:
            out.append(SourcedProblem("command line", None, key, message))
        elif path is not None:
            out.append(ConfigProblem(str(path), _line_of(lines, loc), key, message))
        else:
            out.append(SourcedProblem("settings", None, key, message))
    # Top to bottom within the file, as an editor shows them; the others after, in order.
    return sorted(out, key=lambda p: (type(p) is SourcedProblem, p.line or 0))


def _env_var_for(loc: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The ``BUILDINGD_*`` variable that set ``loc`` or one of its sections (as JSON)."""
    for end in range(len(loc), 0, -1):
        name = "BUILDINGD_" + "__".join(loc[:end]).upper()
        if name in env:
            return env[name]
    return None


def _line_of(lines: Mapping[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    """Line of the deepest prefix of ``loc`` found in the file: the key itself, else its
    ``[section]`` header (an unknown section, a key inside an inline table)."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


# Keys that are gone, named with where their job went rather than as "unknown key".
RETIRED_KEYS: dict[tuple[str, ...], str] = {
    ("mqtt", "bus"): "removed: the agent bus between processes is NATS JetStream now; set "
    '[nats] enabled = true (README, "Several gateways, one site"); agents of one process '
    "need nothing",
    ("mqtt", "bus_key_file"): "moved: the bus key is [nats] bus_key_file now",
}


def _message(e: Any) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        return RETIRED_KEYS.get(tuple(str(p) for p in e["loc"]), "unknown key")
    if kind == "missing":
        return "required key is missing"
    return str(e["msg"]).removeprefix("Value error, ")


# tomllib reports no positions for the keys it parsed, so keys are found by scanning the text:
# ``[section]`` headers and ``key = `` lines (bare, quoted or dotted keys), skipping multi-line
# strings. Good enough for a settings file; an unusual layout only loses the line, not the key.
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
# ``[table]`` or ``[[array-of-tables]]``
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY_PART)


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for raw in _PART_RE.findall(dotted):
        if raw[:1] in ("'", '"'):
            raw = raw[1:-1]
        parts.append(raw)
    return tuple(parts)


def toml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The 1-based line of every table header and key in TOML ``text``, by key path."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string: str | None = None  # the delimiter of the multi-line string being skipped
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        if match := _HEADER_RE.match(line):
            table = _key_parts(match.group(1))
            lines.setdefault(table, number)
        elif match := _KEY_RE.match(line):
            lines.setdefault((*table, *_key_parts(match.group(1))), number)
            value = line[match.end() :]
            for delimiter in ('"""', "'''"):
                if value.count(delimiter) % 2 == 1:
                    in_string = delimiter
                    break
    return lines


_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def toml_syntax_problem(file: str, err: tomllib.TOMLDecodeError) -> ConfigProblem:
    """A TOML syntax error at the line tomllib names (its message ends "(at line L, column C)")."""
    message = str(err)
    match = _TOML_POSITION_RE.search(message)
    if match is None:
        return ConfigProblem(file, None, "", f"TOML syntax error: {message}")
    text = message[: match.start()]
    return ConfigProblem(
        file, int(match.group(1)), "", f"TOML syntax error: {text} (column {match.group(2)})"
    )

"""Settings errors located like the site files' (``file:line: key.path: message``): wrong types,
unknown keys and TOML syntax errors in the file, bad environment variables and options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildingd.errors import ConfigError
from buildingd.service.cli import main
from buildingd.settings import load_settings, toml_key_lines

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BUILDINGD_"):
            monkeypatch.delenv(name)


def check(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["check", "--config", str(config), "--site", str(REPO), *extra])
    return code, capsys.readouterr().err.splitlines()


def test_a_wrong_type_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text('log_level = "info"\n\n[http]\nbind = "127.0.0.1"\nport = "eighty"\n')
    code, err = check(capsys, config)
    assert code == 1
    assert err == [
        f"{config}:5: http.port: Input should be a valid integer, unable to parse string as an "
        "integer",
        "1 problem(s) found",
    ]


def test_unknown_keys_and_sections_are_each_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text(
        "# buildingd settings\n"
        'log_levle = "debug"\n'  # a typo at the top level
        "\n"
        "[mqtt]\n"
        "enabled = true\n"
        "keep_alive_s = 30\n"  # a typo inside a section
        "\n"
        "[influxdb]\n"  # a section that does not exist
        'url = "http://127.0.0.1:8086"\n'
    )
    code, err = check(capsys, config)
    assert code == 1
    assert err == [
        f"{config}:2: log_levle: unknown key",
        f"{config}:6: mqtt.keep_alive_s: unknown key",
        f"{config}:8: influxdb: unknown key",
        "3 problem(s) found",
    ]


def test_the_retired_mqtt_bus_keys_say_where_their_job_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``[mqtt] bus`` (the agent bus over MQTT) is gone and the bus key moved to ``[nats]``: a
    # settings file still naming them is refused (as any unknown key: a key that silently does
    # nothing is how a typo goes unnoticed), but with where to go instead of "unknown key".
    config = tmp_path / "buildingd.toml"
    config.write_text('[mqtt]\nenabled = true\nbus = true\nbus_key_file = "/etc/bus.key"\n')
    code, err = check(capsys, config)
    assert code == 1
    assert err == [
        f"{config}:3: mqtt.bus: removed: the agent bus between processes is NATS JetStream now; "
        'set [nats] enabled = true (README, "Several gateways, one site"); agents of one '
        "process need nothing",
        f"{config}:4: mqtt.bus_key_file: moved: the bus key is [nats] bus_key_file now",
        "2 problem(s) found",
    ]
    # The same from the environment, and the daemon does not start.
    config.write_text("[mqtt]\nenabled = true\n")
    monkeypatch.setenv("BUILDINGD_MQTT__BUS", "true")
    assert main(["run", "--config", str(config), "--site", str(REPO)]) == 1
    assert (
        capsys.readouterr()
        .err.splitlines()[0]
        .startswith(
            "environment BUILDINGD_MQTT__BUS: mqtt.bus: removed: the agent bus between processes "
            "is NATS JetStream now; set [nats] enabled = true"
        )
    )
    # Where it went is taken.
    monkeypatch.delenv("BUILDINGD_MQTT__BUS")
    config.write_text('[nats]\nbus_key_file = "/etc/bus.key"\n')
    assert load_settings(config).nats.bus_key_file == Path("/etc/bus.key")


def test_a_toml_syntax_error_keeps_tomllibs_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text('log_level = "info"\n[http]\nport = \n')
    code, err = check(capsys, config)
    assert code == 1
    assert err == [
        f"{config}:3: (file): TOML syntax error: Invalid value (column 8)",
        "1 problem(s) found",
    ]


def test_environment_and_command_line_are_named_as_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text("[http]\nport = 8750\n")
    # The environment wins over the file, so the error is the variable's, not line 2's.
    monkeypatch.setenv("BUILDINGD_HTTP__PORT", "99999")
    code, err = check(capsys, config)
    assert code == 1
    assert err[0] == (
        "environment BUILDINGD_HTTP__PORT: http.port: Input should be less than or equal to 65535"
    )
    monkeypatch.delenv("BUILDINGD_HTTP__PORT")
    assert main(["run", "--config", str(config), "--site", str(REPO), "--speed", "0"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "command line: speed: Input should be greater than 0"
    )


def test_the_real_command_exits_1_on_bad_settings_and_0_on_good_ones(tmp_path: Path) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text("[sim]\nseed = 1.5\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BUILDINGD_")}
    for command in ("check", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "buildingd", command, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert f"{config}:2: sim.seed: Input should be a valid integer" in proc.stderr
        assert "Traceback" not in proc.stderr and "pydantic" not in proc.stderr
    config.write_text('log_level = "warning"\n[sim]\nseed = 2\n')
    proc = subprocess.run(
        [sys.executable, "-m", "buildingd", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ")


def test_a_missing_settings_file_is_a_located_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "nowhere.toml")
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'nowhere.toml'}:1: (file): settings file does not exist"
    ]


def test_key_lines_follow_tables_dotted_and_quoted_keys_and_skip_multiline_strings() -> None:
    text = (
        'site_dir = "/srv/site"\n'  # 1
        'note = """\n'  # 2
        "port = 1\n"  # 3: inside a string, not a key
        '"""\n'  # 4
        "http.port = 8750\n"  # 5: dotted key at the top level
        "[ mqtt ]  # broker\n"  # 6
        '"host" = "broker.lan"\n'  # 7
        "tls.enabled = true\n"  # 8
        "[[sim.zones]]\n"  # 9
        "id = 'a'\n"  # 10
        "influx = { url = 'x' }\n"  # 11: inline table: only the key of the table
    )
    assert toml_key_lines(text) == {
        ("site_dir",): 1,
        ("note",): 2,
        ("http", "port"): 5,
        ("mqtt",): 6,
        ("mqtt", "host"): 7,
        ("mqtt", "tls", "enabled"): 8,
        ("sim", "zones"): 9,
        ("sim", "zones", "id"): 10,
        ("sim", "zones", "influx"): 11,
    }


def test_a_key_inside_an_inline_table_gets_the_line_of_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "buildingd.toml"
    config.write_text('log_level = "info"\nhttp = { bind = "127.0.0.1", port = "x" }\n')
    code, err = check(capsys, config)
    assert code == 1
    assert err[0].startswith(f"{config}:2: http.port: Input should be a valid integer")

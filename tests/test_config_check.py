"""`buildingd check`: the demo site passes; broken files fail with file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buildingd.config.loader import load_site
from buildingd.errors import ConfigError
from buildingd.service.cli import main


def check(site: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["check", "--site", str(site)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_demo_site_is_valid(demo_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(demo_site, capsys)
    assert rc == 0, err
    assert out.startswith("ok: site demo-office: 8 zones")


def test_check_runs_as_console_script(demo_site: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "buildingd", "check", "--site", str(demo_site)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 zones" in proc.stdout


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _line_of(path: Path, needle: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(needle)


def test_unknown_key_in_policy(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = site_copy / "policies" / "office.yaml"
    _replace(policy, "      vacancy_timeout_s: 900", "      vacancy_timout_s: 900")
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    line = _line_of(policy, "vacancy_timout_s")
    assert f"{policy}:{line}: policies[0].lighting.vacancy_timout_s: unknown key" in err


def test_wrong_type_in_device(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = site_copy / "devices" / "demo-sim.yaml"
    _replace(devices, "poll_interval_s: 10", "poll_interval_s: often")
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    line = _line_of(devices, "often")
    assert f"{devices}:{line}: devices[0].poll_interval_s:" in err
    assert "number" in err


def test_writable_point_without_limits(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = site_copy / "devices" / "demo-sim.yaml"
    _replace(devices, "writable: true, limits: {min: 5, max: 35}", "writable: true")
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    line = _line_of(devices, "kind: heating_setpoint, writable: true}")
    assert f"{devices}:{line}: devices[0].points[2]: a writable point needs limits" in err


def test_point_in_zone_no_policy_covers(
    site_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = site_copy / "policies" / "office.yaml"
    _replace(policy, "    zones: [f2-server]", "    zones: [f2-serv*x]")
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    assert "zone 'f2-server' is covered by no policy" in err
    assert "'f2-serv*x' matches no zone in site.yaml" in err


def test_duplicate_device_id(site_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = site_copy / "devices" / "extra.yaml"
    extra.write_text(
        "devices:\n  - id: main-meter\n    driver: sim\n    points:\n"
        "      - {id: power, kind: power}\n"
    )
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    assert f"{extra}:2: devices[0].id: duplicate device id 'main-meter'" in err


def test_yaml_syntax_error_and_unknown_zone(
    site_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site_copy / "devices" / "bad.yaml"
    bad.write_text("devices:\n  - id: x\n    points: [\n")
    other = site_copy / "devices" / "other.yaml"
    other.write_text(
        "devices:\n  - id: lobby-sensor\n    driver: sim\n    points:\n"
        "      - id: t\n        zone: lobby\n        kind: temperature\n"
    )
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    assert f"{bad}:4: (file): YAML syntax error" in err
    assert f"{other}:6: devices[0].points[0].zone: unknown zone 'lobby'" in err


def test_comfort_band_outside_safety_band(site_copy: Path) -> None:
    policy = site_copy / "policies" / "office.yaml"
    _replace(policy, "      min_c: 12.0", "      min_c: 17.0")
    with pytest.raises(ConfigError) as err:
        load_site(site_copy)
    (problem,) = err.value.problems
    assert problem.key == "policies[0]"
    assert "comfort.unoccupied (16.0..29.0 degC) is outside the safety band" in problem.message
    assert problem.line == _line_of(policy, "  - id: office")


def test_every_problem_is_reported_at_once(site_copy: Path) -> None:
    policy = site_copy / "policies" / "office.yaml"
    _replace(policy, "timezone: Europe/Berlin", "timezone: Mars/Olympus")
    devices = site_copy / "devices" / "demo-sim.yaml"
    _replace(devices, "kind: humidity", "kind: humidty")
    with pytest.raises(ConfigError) as err:
        load_site(site_copy)
    messages = [str(p) for p in err.value.problems]
    assert any("unknown timezone 'Mars/Olympus'" in m for m in messages)
    assert any("points[1].kind" in m and "demo-sim.yaml" in m for m in messages)


def test_broken_modbus_register_maps_name_file_line_and_key(
    site_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = "devices:\n  - id: vav-7\n    driver: modbus-tcp\n    connection: {host: 192.0.2.7}\n"
    where = "zone: f1-kitchen, table: holding_register"
    overlapping = site_copy / "devices" / "bad-map.yaml"
    overlapping.write_text(
        head + "    points:\n"
        f"      - {{id: t, kind: temperature, {where}, address: 0, type: float32}}\n"
        f"      - {{id: rh, kind: humidity, {where}, address: 1}}\n"
        f"      - {{id: x, kind: co2, {where}, address: 65535, type: uint32}}\n"
    )
    schema = site_copy / "devices" / "bad-schema.yaml"
    schema.write_text(
        head.replace("vav-7", "vav-8") + "    points:\n"
        f"      - {{id: y, kind: co2, {where}, address: 9, type: int24}}\n"
        f"      - {{id: sp, kind: heating_setpoint, {where}, address: 8, writable: true}}\n"
    )
    rc, _, err = check(site_copy, capsys)
    assert rc == 1
    line = _line_of(overlapping, "id: rh")
    assert f"{overlapping}:{line}: devices[0].points[1].address: overlaps point 't'" in err
    assert (
        f"{overlapping}:{_line_of(overlapping, 'id: x')}: devices[0].points[2].address: runs" in err
    )
    assert f"{schema}:{_line_of(schema, 'id: y')}: devices[0].points[0].type:" in err
    assert f"{schema}:{_line_of(schema, 'id: sp')}: devices[0].points[1]: " in err
    assert "a writable point needs limits" in err

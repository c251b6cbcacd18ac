"""A site spread over gateways (site.yaml ``gateways:``, ``gateway:`` per device or device file):
who runs which device, zone and coordinator, and ``buildingd check`` pointing at the file, line
and key of every wrong assignment. The single-gateway demo needs none of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildingd.config.loader import load_site
from buildingd.service.cli import main
from tests.conftest import ALWAYS_OCCUPIED

SITE = """\
site: hq
zones:
  - {id: a1}
  - {id: a2}
  - {id: b1}
  - {id: c1}
gateways:
  - {id: gw-a, zones: ["a*"], coordinator: true}
  - {id: gw-b}
"""
DEVICES = """\
gateway: gw-b
devices:
  - id: t-a1
    driver: sim
    points: [{id: temperature, zone: a1, kind: temperature}]
  - id: t-b1
    driver: sim
    points: [{id: temperature, zone: b1, kind: temperature}]
  - id: t-c1
    driver: sim
    gateway: gw-a
    points:
      - {id: temperature, zone: c1, kind: temperature}
      - {id: humidity, zone: c1, kind: humidity}
  - id: s-c1
    driver: sim
    points: [{id: occupancy, zone: c1, kind: occupancy}]
"""


def write_site(root: Path, site: str = SITE, devices: str = DEVICES) -> Path:
    (root / "devices").mkdir(parents=True)
    (root / "policies").mkdir()
    (root / "site.yaml").write_text(site)
    (root / "devices" / "devices.yaml").write_text(devices)
    (root / "policies" / "p.yaml").write_text(ALWAYS_OCCUPIED)
    return root


def check(site: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["check", "--site", str(site)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def line_of(path: Path, needle: str, after: int = 0) -> int:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if n > after and needle in line:
            return n
    raise AssertionError(needle)


def test_the_demo_site_is_one_gateway_running_everything(demo_site: Path) -> None:
    site = load_site(demo_site)
    assert site.gateways.single
    for gateway_id in (None, "anything"):
        assert all(site.gateways.runs_device(gateway_id, d) for d in site.devices)
        assert all(site.gateways.runs_zone(gateway_id, z) for z in site.zones)
        assert site.gateways.may_coordinate(gateway_id)
        assert site.gateways.problem_with(gateway_id) is None


def test_devices_zones_and_coordinator_are_assigned_as_declared(tmp_path: Path) -> None:
    gmap = load_site(write_site(tmp_path / "site")).gateways
    assert gmap.gateways == ("gw-a", "gw-b")
    # The device's own key beats its file's default.
    assert dict(gmap.device_gateway) == {"t-a1": "gw-b", "t-b1": "gw-b", "t-c1": "gw-a",
                                         "s-c1": "gw-b"}  # fmt: skip
    # a1, a2 listed by gw-a (a1 although its thermostat is on gw-b); b1 where its only device
    # is; c1 where two of its three points are; nothing else.
    assert dict(gmap.zone_gateway) == {"a1": "gw-a", "a2": "gw-a", "b1": "gw-b", "c1": "gw-a"}
    assert gmap.coordinator_candidates == ("gw-a",)
    assert gmap.runs_device("gw-b", "t-a1") and not gmap.runs_device("gw-a", "t-a1")
    assert gmap.runs_zone("gw-b", "b1") and not gmap.runs_zone("gw-a", "b1")
    assert gmap.may_coordinate("gw-a") and not gmap.may_coordinate("gw-b")


def test_a_tie_goes_to_the_gateway_declared_first_and_no_candidate_means_all(
    tmp_path: Path,
) -> None:
    site = SITE.replace('["a*"], coordinator: true', '["a*"]')
    devices = DEVICES.replace("      - {id: humidity, zone: c1, kind: humidity}\n", "")
    gmap = load_site(write_site(tmp_path / "site", site, devices)).gateways
    assert gmap.zone_gateway["c1"] == "gw-a"  # one point each: gw-a is declared first
    assert gmap.coordinator_candidates == ("gw-a", "gw-b")


def test_check_locates_every_wrong_assignment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = SITE.replace("  - {id: gw-b}\n", "  - {id: gw-b, zones: [a2, z*]}\n  - {id: gw-a}\n")
    devices = DEVICES.replace("    gateway: gw-a\n", "    gateway: gw-x\n")
    devices = devices.replace("gateway: gw-b\n", "")
    root = write_site(tmp_path / "site", site, devices)
    rc, out = check(root, capsys)
    assert rc == 1
    s, d = root / "site.yaml", root / "devices" / "devices.yaml"
    gw_b = line_of(s, "id: gw-b")
    assert f"{s}:{gw_b}: gateways[1].zones[0]: zone 'a2' is also assigned to gateway 'gw-a'" in out
    assert f"{s}:{gw_b}: gateways[1].zones[1]: 'z*' matches no zone" in out
    assert f"{s}:{line_of(s, 'id: gw-a', gw_b)}: gateways[2].id: duplicate gateway 'gw-a'" in out
    assert (f"{d}:{line_of(d, 'gateway: gw-x')}: devices[2].gateway: unknown gateway 'gw-x' "
            "(site.yaml declares gw-a, gw-b)") in out  # fmt: skip
    # Without the file's default, the other devices are attached nowhere.
    assert (f"{d}:{line_of(d, 'id: t-a1')}: devices[0].gateway: which gateway is it attached "
            "to? (gw-a, gw-b)") in out  # fmt: skip


def test_check_refuses_a_gateway_on_a_site_that_declares_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = SITE.split("gateways:")[0]
    root = write_site(tmp_path / "site", site)
    rc, out = check(root, capsys)
    assert rc == 1
    d = root / "devices" / "devices.yaml"
    assert f"{d}:1: gateway: gateway 'gw-b', but site.yaml declares no gateways" in out
    line = line_of(d, "gateway: gw-a")
    assert f"{d}:{line}: devices[2].gateway: gateway 'gw-a', but site.yaml declares" in out


def test_check_wants_this_process_s_gateway_to_be_one_of_the_site_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_site(tmp_path / "site")
    monkeypatch.delenv("BUILDINGD_GATEWAY__ID", raising=False)
    monkeypatch.delenv("BUILDINGD_NATS__ENABLED", raising=False)
    rc, out = check(root, capsys)
    assert rc == 1
    assert "gateway.id: the site runs on gateways gw-a, gw-b: set this one's id" in out
    assert "nats.enabled: the site runs on several gateways: their bus needs [nats]" in out
    monkeypatch.setenv("BUILDINGD_NATS__ENABLED", "true")
    monkeypatch.setenv("BUILDINGD_GATEWAY__ID", "gw-z")
    rc, out = check(root, capsys)
    assert rc == 1
    assert ("environment BUILDINGD_GATEWAY__ID: gateway.id: gateway 'gw-z' is not declared in "
            "site.yaml gateways") in out  # fmt: skip
    monkeypatch.setenv("BUILDINGD_GATEWAY__ID", "gw-b")
    rc, out = check(root, capsys)
    assert rc == 0, out
    config = tmp_path / "buildingd.toml"
    config.write_text('[gateway]\nid = "gw-q"\n\n[nats]\npassword_file = "/nonexistent/pw"\n')
    monkeypatch.delenv("BUILDINGD_GATEWAY__ID")
    rc = main(["check", "--config", str(config), "--site", str(root)])
    out = "".join(capsys.readouterr())
    assert rc == 1
    assert f"{config}:2: gateway.id: gateway 'gw-q' is not declared" in out
    assert f"{config}:5: nats.password_file: cannot read /nonexistent/pw" in out

"""The three-gateway example the README points to: the NATS node configuration is one the
shipped nats-server accepts, its gateway users have exactly the permissions the bus needs, and
the systemd unit for the node passes ``systemd-analyze verify``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from buildingd.nats.server_bin import server_binary
from buildingd.nats.subjects import gateway_permissions
from tests.conftest import REPO
from tests.test_systemd_unit import verify

EXAMPLE = REPO / "systemd" / "nats-server.conf.example"
UNIT = REPO / "systemd" / "nats-server.service"


def checked(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "nats-server.conf"
    conf.write_text(text.replace("/var/lib/buildingd-nats", str(tmp_path / "js")))
    return subprocess.run([server_binary(), "-t", "-c", str(conf)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_the_example_node_configuration_is_valid(tmp_path: Path) -> None:
    proc = checked(tmp_path, EXAMPLE.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The check can fail: a route block with a typo is refused.
    broken = checked(tmp_path, EXAMPLE.read_text().replace("routes: [", "routes: [[", 1))
    assert broken.returncode != 0


def test_each_gateway_user_has_exactly_the_permissions_the_bus_needs() -> None:
    text = EXAMPLE.read_text()
    start = text.index("[", text.index("users:"))
    users, _ = json.JSONDecoder().raw_decode(text[start:])
    site = re.search(r'name: "buildingd-([^"]+)"', text)
    assert site is not None
    assert [u["user"] for u in users] == [f"{site.group(1)}-gw{i}" for i in (1, 2, 3)]
    for i, user in enumerate(users, 1):
        assert user["permissions"] == gateway_permissions(site.group(1), f"gw{i}")


@pytest.mark.systemd
def test_the_nats_server_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), count=1, flags=re.M)
    path = tmp_path / "nats-server.service"
    path.write_text(text)
    proc = verify(path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert [line for line in output.splitlines() if "nats-server" in line] == [], output


def test_the_readme_gateway_settings_are_valid_settings() -> None:
    import tomllib

    from buildingd.settings import Settings

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("#### A three-gateway example") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    settings = Settings(**tomllib.loads(block.group(1)))
    assert settings.gateway.id == "gw1" and settings.nats.enabled
    assert len(settings.nats.servers) == 3 and settings.nats.user == "demo-office-gw1"
    assert settings.nats.bus_key_file == Path("/etc/buildingd/bus.key")  # in [nats]

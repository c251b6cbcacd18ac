"""The systemd files: the unit passes `systemd-analyze verify` and rates 1.5 or better in
`systemd-analyze security --offline=true`; sysusers creates the user; install.sh/uninstall.sh
stage a complete install under DESTDIR (never the live system here) and never overwrite config."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "buildingd.service"
MAX_EXPOSURE = 1.5


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package 'systemd'", pytrace=False)
    return path


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys repeat in unit files)."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == section and k == key]


def single(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{key}= set {len(found)} times in [{section}]"
    return found[0]


def runnable_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart pointed at a binary that exists here (verify checks it)."""
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), count=1, flags=re.M)
    if extra:
        text = text.replace("[Install]", f"{extra}\n\n[Install]")
    path = tmp_path / "buildingd.service"
    path.write_text(text)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


@pytest.mark.systemd
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    path = runnable_copy(tmp_path)
    proc = verify(path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    about_unit = [line for line in output.splitlines() if "buildingd" in line]
    assert about_unit == [], output


@pytest.mark.systemd
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported (verify still exits 0 for it)."""
    proc = verify(runnable_copy(tmp_path, extra="WatchdogSecs=30s"))
    assert "Unknown key 'WatchdogSecs'" in proc.stdout + proc.stderr


@pytest.mark.systemd
def test_offline_security_exposure_is_at_most_1_5() -> None:
    proc = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for buildingd\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, proc.stdout

    table = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--json=short", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    checks = {item["name"]: item for item in json.loads(table.stdout)}
    for name in (
        "User=/DynamicUser=",
        "NoNewPrivileges=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_NET_ADMIN",
        "AmbientCapabilities=",
        "SystemCallFilter=~@privileged",
        "SystemCallFilter=~@resources",
        "SystemCallArchitectures=",
        "RestrictAddressFamilies=~AF_PACKET",
        "RestrictAddressFamilies=~AF_NETLINK",
        "RestrictAddressFamilies=~…",
        "ProtectSystem=",
        "ProtectHome=",
        "ProtectProc=",
        "ProcSubset=",
        "MemoryDenyWriteExecute=",
        "RestrictNamespaces=~user",
        "NotifyAccess=",
        "UMask=",
    ):
        assert checks[name]["exposure"] is None, (name, checks[name])


def test_unit_is_a_watchdogged_notify_service() -> None:
    assert single("Type") == "notify"
    assert single("NotifyAccess") == "main"
    assert single("WatchdogSec") == "30s"
    assert single("Restart") == "on-failure"
    assert single("RestartSec")
    assert single("StartLimitIntervalSec", "Unit")
    assert single("StartLimitBurst", "Unit")
    assert single("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert single("TimeoutStopSec")
    assert single("ExecStart") == (
        "/opt/buildingd/venv/bin/buildingd run --config /etc/buildingd/buildingd.toml"
    )
    assert "PYTHONUNBUFFERED=1" in values("Environment")
    assert single("ConfigurationDirectory") == "buildingd"
    assert single("StateDirectory") == "buildingd"
    assert single("WantedBy", "Install") == "multi-user.target"


def test_unit_ordering_and_serial_access() -> None:
    after = " ".join(values("After", "Unit")).split()
    assert "network-online.target" in after
    assert "systemd-modules-load.service" in after
    assert "network-online.target" in " ".join(values("Wants", "Unit")).split()
    # Static user from sysusers, not DynamicUser, with the serial group.
    assert single("User") == single("Group") == "buildingd"
    assert values("DynamicUser") == []
    # Serial lines through dialout, BlueZ on the system bus through bluetooth.
    assert single("SupplementaryGroups").split() == ["dialout", "bluetooth"]
    assert single("DevicePolicy") == "closed"
    allowed = values("DeviceAllow")
    assert "char-ttyUSB rw" in allowed
    assert "char-ttyACM rw" in allowed
    assert values("PrivateDevices") == []  # it would hide /dev/ttyUSB*
    assert single("CapabilityBoundingSet") == ""
    assert single("AmbientCapabilities") == ""
    assert single("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert single("UMask") == "0077"


def test_ip_allow_list_keeps_the_lan_reachable() -> None:
    """InfluxDB, MQTT brokers and Modbus gateways live on private networks: all must pass."""
    assert single("IPAddressDeny") == "any"
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    symbolic = {
        "localhost": ["127.0.0.0/8", "::1/128"],
        "link-local": ["169.254.0.0/16", "fe80::/64"],
        "multicast": ["224.0.0.0/4", "ff00::/8"],
    }
    for entry in " ".join(values("IPAddressAllow")).split():
        for net in symbolic.get(entry, [entry]):
            allowed.append(ipaddress.ip_network(net))

    def reachable(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in allowed)

    for address in ("127.0.0.1", "::1", "192.168.1.20", "10.20.30.40", "172.16.5.5",
                    "172.31.255.1", "fd12:3456::1", "169.254.1.1"):  # fmt: skip
        assert reachable(address), address
    assert not reachable("8.8.8.8")  # the internet needs an explicit drop-in (docs/systemd.md)


@pytest.mark.systemd
def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [
            tool("systemd-sysusers"),
            f"--root={tmp_path}",
            "--replace=/usr/lib/sysusers.d/buildingd.conf",
            "-",
        ],
        input=(SYSTEMD / "buildingd.sysusers").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    user = passwd[single("User")]
    assert 0 < int(user[2]) < 1000  # a system user
    assert user[5] == "/var/lib/buildingd"
    assert user[6].endswith("nologin")
    assert groups[single("Group")][2] == user[3]
    assert "buildingd" in groups["dialout"][3].split(",")
    # Created where BlueZ did not, so the unit's SupplementaryGroups always resolves.
    assert "buildingd" in groups["bluetooth"][3].split(",")


def test_modules_load_file_registers_the_serial_majors() -> None:
    lines = (SYSTEMD / "buildingd-modules.conf").read_text().splitlines()
    modules = [line.strip() for line in lines if line.strip() and line[0] not in "#;"]
    assert modules == ["usbserial", "cdc_acm"]


def test_example_settings_load() -> None:
    from buildingd.settings import load_settings

    settings = load_settings(SYSTEMD / "buildingd.toml.example")
    assert settings.site_dir == Path("/etc/buildingd")
    assert settings.state_dir == Path("/var/lib/buildingd")
    assert settings.http.bind == "127.0.0.1"


def run_script(
    name: str, destdir: Path, *args: str, skip_venv: bool = True
) -> subprocess.CompletedProcess[str]:
    assert str(destdir) not in ("", "/"), "tests must never install into the live system"
    env = {**os.environ, "DESTDIR": str(destdir)}
    if skip_venv:
        env["BUILDINGD_INSTALL_SKIP_VENV"] = "1"
    proc = subprocess.run(
        ["bash", str(SYSTEMD / name), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def staged_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_scripts_parse() -> None:
    for name in ("install.sh", "uninstall.sh"):
        subprocess.run(["bash", "-n", str(SYSTEMD / name)], check=True, timeout=30)
        assert os.access(SYSTEMD / name, os.X_OK), f"{name} is not executable"


def test_install_stages_everything_under_destdir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = run_script("install.sh", root)
    same = {
        "etc/systemd/system/buildingd.service": SYSTEMD / "buildingd.service",
        "usr/lib/sysusers.d/buildingd.conf": SYSTEMD / "buildingd.sysusers",
        "etc/modules-load.d/buildingd.conf": SYSTEMD / "buildingd-modules.conf",
        "etc/buildingd/buildingd.toml": SYSTEMD / "buildingd.toml.example",
        "opt/buildingd/share/buildingd.toml.example": SYSTEMD / "buildingd.toml.example",
        "etc/buildingd/site.yaml": REPO / "site.yaml",
    }
    for rel, source in same.items():
        assert (root / rel).read_bytes() == source.read_bytes(), rel
    for source in [*(REPO / "devices").rglob("*"), *(REPO / "policies").rglob("*")]:
        if source.is_file():
            relative = source.relative_to(REPO)
            target = root / "etc/buildingd" / relative
            assert target.read_bytes() == source.read_bytes(), relative
    # Settings may hold secrets.
    assert stat.S_IMODE((root / "etc/buildingd/buildingd.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/systemd/system/buildingd.service").stat().st_mode) == 0o644
    # The venv step was skipped on request; nothing outside DESTDIR was written.
    assert not (root / "opt/buildingd/venv").exists()
    for command in (
        "systemctl enable --now buildingd",
        "systemctl status buildingd",
        "journalctl -u buildingd -f",
        "systemctl reload buildingd",
    ):
        assert command in proc.stdout, command

    # The staged site is a complete, valid building.
    from buildingd.config.loader import load_site

    site = load_site(root / "etc/buildingd")
    assert site.devices


def test_install_never_overwrites_configuration(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_script("install.sh", root)
    settings = root / "etc/buildingd/buildingd.toml"
    policy = next((root / "etc/buildingd/policies").glob("*.yaml"))
    settings.write_text('log_level = "debug"\n')
    policy.write_text("# edited by facilities\n")
    demo_devices = sorted((root / "etc/buildingd/devices").glob("*.yaml"))
    demo_devices[0].unlink()  # the engineer removed the simulated devices

    proc = run_script("install.sh", root)
    assert settings.read_text() == 'log_level = "debug"\n'
    assert policy.read_text() == "# edited by facilities\n"
    # A site exists, so no simulated device is put back into it.
    assert not demo_devices[0].exists()
    assert "keeping /etc/buildingd/buildingd.toml" in proc.stdout
    assert "demo site not copied" in proc.stdout


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = run_script("install.sh", root, "--dry-run", skip_venv=False)
    assert not root.exists()
    assert f"+ install -D -m 0644 {UNIT} {root}/etc/systemd/system/buildingd.service" in proc.stdout
    assert f"-m venv {root}/opt/buildingd/venv" in proc.stdout
    assert "pip install" in proc.stdout
    assert "dry run: nothing was changed" in proc.stdout


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_script("install.sh", root)
    (root / "var/lib/buildingd").mkdir(parents=True)
    (root / "var/lib/buildingd/buffer.lp").write_text("m v=1 1\n")
    installed = staged_files(root)

    proc = run_script("uninstall.sh", root, "--dry-run")
    assert staged_files(root) == installed
    assert "rm -f" in proc.stdout

    run_script("uninstall.sh", root)
    left = staged_files(root)
    assert all(f.startswith(("etc/buildingd/", "var/lib/buildingd/")) for f in left), left
    assert "etc/buildingd/buildingd.toml" in left
    assert "var/lib/buildingd/buffer.lp" in left
    assert not (root / "opt/buildingd").exists()

    run_script("uninstall.sh", root, "--purge")
    assert staged_files(root) == set()

"""Fault suite, the bus between processes (issues 14, 19): with ``[nats] enabled`` a command reaches
a device only from a gateway holding the site's key (HMAC seal, fresh timestamp, unseen counter)
and only from a sender the device may hear from. A raw NATS client holding the cluster's
credentials plays the attacker against a real daemon on a real 3-node cluster, on both ways in
(the site's command stream and core subjects); the thermostat, read back over Modbus, says
whether anything was written."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from pymodbus.client import ModbusTcpClient

from buildingd.agents.bus import Performative
from buildingd.agents.messages import CommandMsg
from buildingd.nats import subjects
from buildingd.nats.seal import BusSealer
from tests.conftest import free_port
from tests.daemon_proc import Running, start_daemon
from tests.nats_cluster import ADMIN, NatsCluster

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SITE = "demo-office"
THERMOSTAT = "device[f1-meeting-thermostat]"
# One gateway (the demo declares no ``gateways:``): its id is "main", every agent runs in it.
STREAM_SUBJECT = subjects.command_subject(SITE, "main", THERMOSTAT)
CORE_SUBJECT = subjects.gateway_agent_subject(SITE, "main", THERMOSTAT)
FORGED_C = 27.5  # what the attacker asks for: above any band of the demo policy


@pytest.fixture
def daemon(site_copy: Path, tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Running]:
    env = {
        "BUILDINGD_NATS__ENABLED": "true",
        "BUILDINGD_NATS__SERVERS": json.dumps(nats_cluster.urls),
        "BUILDINGD_NATS__USER": ADMIN.name,
        "BUILDINGD_NATS__PASSWORD": ADMIN.password,
        "BUILDINGD_SIM__MODBUS_PORT": str(free_port()),
    }
    # Real time (speed 1), as the hand setpoint must hold while the forgeries are refused.
    live = start_daemon(site_copy, tmp_path, env=env, speed=1.0)
    try:
        live.wait_ready(timeout_s=120.0)  # three servers and a daemon on a loaded machine
        yield live
    finally:
        live.stop()


def command(sender: str, value_c: float) -> dict[str, object]:
    msg = CommandMsg(point_id="heating_sp", value=value_c, zone_id="f1-meeting", reason="test")
    return msg.envelope(Performative.REQUEST, sender, THERMOSTAT).model_dump(mode="json")


def publish(cluster: NatsCluster, messages: list[tuple[str, bytes]]) -> None:
    """Publish raw payloads as an intruder with the cluster's credentials: into the site's
    command stream (each with its own ``Nats-Msg-Id``, so none is dropped as a duplicate) or on
    a core subject."""

    async def run() -> None:
        client = await nats.connect(cluster.urls, user=ADMIN.name, password=ADMIN.password)
        js = client.jetstream(timeout=10)
        try:
            for subject, payload in messages:
                if subject == STREAM_SUBJECT:
                    await js.publish(
                        subject, payload, headers={"Nats-Msg-Id": f"x{time.time_ns()}"}
                    )
                else:
                    await client.publish(subject, payload)
            await client.flush()
        finally:
            await client.close()

    asyncio.run(run())


def thermostat_heating_c(port: int) -> float:
    """The f1-meeting thermostat's heating setpoint, read from the simulated device (unit 1,
    holding register 0, int16 in 0.1 °C) on the daemon's simulated Modbus gateway."""
    client = ModbusTcpClient("127.0.0.1", port=port)
    assert client.connect()
    try:
        reply = client.read_holding_registers(0, count=1, device_id=1)
        assert not reply.isError(), reply
        (word,) = reply.registers
        return round((word - 0x10000 if word & 0x8000 else word) * 0.1, 1)
    finally:
        client.close()


def refused(daemon: Running, reason: str) -> float:
    return daemon.metric("buildingd_bus_refused_total", reason=reason)


def test_forged_commands_never_reach_the_thermostat(
    daemon: Running, nats_cluster: NatsCluster
) -> None:
    key_file = daemon.state / "bus.key"
    assert key_file.stat().st_mode & 0o777 == 0o600  # created at the first start, private
    key = key_file.read_bytes().strip()
    modbus_port = int(daemon.env["BUILDINGD_SIM__MODBUS_PORT"])

    # What the zone asks for depends on the hour and on who is in: it is pinned where it is by
    # a setpoint set by hand through the API (the legitimate path; a hand setpoint far from the
    # hour's band would be refused), so nothing but a forgery could move it.
    def written() -> bool:
        wanted_c = daemon.json("/api/zones/f1-meeting")["heating_sp_c"]
        return thermostat_heating_c(modbus_port) == wanted_c

    daemon.until(written, "the zone's setpoint on the thermostat")
    held_c = thermostat_heating_c(modbus_port)
    status, result = daemon.post_json("/api/zones/f1-meeting/override", {"heating_sp_c": held_c})
    assert status == 200 and result["accepted"], result

    # A made-up zone, no seal at all, on the core subject (50 times: logged once, counted 50).
    unsealed = json.dumps({"origin": "evil", "envelope": command("zone[attacker]", FORGED_C)})
    attack = [(CORE_SUBJECT, unsealed.encode())] * 50
    # Into the command stream, sealed with a key that is not the site's.
    as_the_zone = command("zone[f1-meeting]", FORGED_C)
    wrong_key = BusSealer(b"not-the-site-key!", "evil")
    attack.append((STREAM_SUBJECT, wrong_key.seal(STREAM_SUBJECT, as_the_zone)))
    # The site's key (a gateway of the site gone wrong): a made-up sender, and a real zone that
    # does not own this thermostat.
    insider = BusSealer(key, "insider")
    for sender in ("zone[attacker]", "zone[f2-office-a]"):
        attack.append((STREAM_SUBJECT, insider.seal(STREAM_SUBJECT, command(sender, FORGED_C))))
    # An old message, stored in the stream now: judged against the time the stream stored it.
    old = BusSealer(key, "old", clock=lambda: time.time() - 600)
    attack.append((STREAM_SUBJECT, old.seal(STREAM_SUBJECT, as_the_zone)))
    publish(nats_cluster, attack)

    daemon.until(lambda: refused(daemon, "unauthenticated") == 51, "51 unauthenticated")
    daemon.until(lambda: refused(daemon, "forbidden sender") == 1, "the made-up sender")
    # (zone[f2-office-a] runs in this daemon: a message from outside in its name is forged)
    daemon.until(lambda: refused(daemon, "forged sender") == 1, "the other zone")
    daemon.until(lambda: refused(daemon, "stale") == 1, "1 stale")
    # A sealed message is refused once for what it says (the zone runs in this daemon) and,
    # played again under another message id, as a replay.
    genuine = insider.seal(STREAM_SUBJECT, as_the_zone)
    publish(nats_cluster, [(STREAM_SUBJECT, genuine), (STREAM_SUBJECT, genuine)])
    daemon.until(lambda: refused(daemon, "replayed") == 1, "the replay refused")
    assert refused(daemon, "forged sender") == 2

    # The thermostat, read over Modbus, holds the hand setpoint; no forged write was audited.
    assert thermostat_heating_c(modbus_port) == held_c
    assert not [line for line in daemon.output if f"value={FORGED_C}" in line]
    logged = [line for line in daemon.output if "bus: refused (" in line]
    assert 0 < len(logged) <= 5, logged  # once per reason, not per message

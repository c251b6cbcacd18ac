"""Coordinator failover between two buildingd processes on a real 3-node NATS cluster: both
gateways are coordinator candidates; the one holding the lease runs the coordinator, the other
answers "not running"; after a SIGKILL of the leader the other takes the lease (a higher
revision: one holder at a time) and its coordinator has the demand-response commitment, the
votes and the air-handler reset the dead one had in force (from the site's KV bucket: the two
gateways share no files), and a request sent while nobody led is delivered to it once. A leader
paused past its lease sends nothing as the coordinator when it runs again (fenced, counted). A
gateway cut off from the cluster runs its zones, alerts once and rejoins without doubles; the
stream's leader killed as an event starts loses and doubles nothing, also when it leads the
lease bucket too and the coordinator changes before the award."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from buildingd.config.loader import load_site
from buildingd.nats.subjects import lease_bucket, state_bucket, stream_name
from tests.conftest import free_port
from tests.daemon_proc import Running, start_daemon
from tests.nats_cluster import ADMIN, NatsCluster, gateway_env

pytestmark = [pytest.mark.nats, pytest.mark.slow]
WAIT_S = 90.0  # generous: two daemons and three servers on a loaded 2-core machine
REVISION = "buildingd_coordinator_lease_revision"
CALL = {"target_w": 2000, "window_s": 3600}
IN_FORCE = {"awarding", "executing"}


def run_of(daemon: Running, conversation: str) -> dict[str, Any] | None:
    status, runs = daemon.get("/api/negotiations")
    if status != 200:
        return None
    print(f"negotiations on {daemon.env['BUILDINGD_GATEWAY__ID']}: {runs}")  # shown on failure
    return next((r for r in runs if r["conversation_id"] == conversation), None)


def mirrored(cluster: NatsCluster, key: str = "commitments.json") -> str:
    """A key of the site's state bucket ("" before the first write)."""

    async def read() -> str:
        nc = await nats.connect(servers=cluster.urls, user=ADMIN.name, password=ADMIN.password)
        try:
            kv = await nc.jetstream(timeout=5).key_value(state_bucket("demo-office"))
            return ((await kv.get(key)).value or b"").decode()
        except nats.errors.Error:
            return ""
        finally:
            await nc.close()

    return asyncio.run(read())


def two_candidates(site: Path) -> None:
    """Devices (and so, by majority, the zones) on ``devices``; both gateways candidates. The
    supply-air reset starts at 15 degC and trims up every 30 s after a 60 s delay (simulated),
    so it is seen moving within seconds."""
    text = (site / "site.yaml").read_text()
    reset = "    supply_air_reset: {sp0_c: 15.0, delay_s: 60, step_s: 30}\n"
    (site / "site.yaml").write_text(text.replace("  - id: ahu1\n", "  - id: ahu1\n" + reset))
    with (site / "site.yaml").open("a") as out:
        out.write("\ngateways:\n  - {id: devices, coordinator: true}\n"
                  "  - {id: zones, coordinator: true}\n")  # fmt: skip
    for path in (site / "devices").glob("*.yaml"):
        path.write_text("gateway: devices\n" + path.read_text())


@pytest.fixture
def start(site_copy: Path, tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[object]:
    two_candidates(site_copy)
    key = tmp_path / "bus.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    started: list[Running] = []

    def gateway(name: str, speed: float = 30.0, **extra: str) -> Running:
        env = gateway_env(nats_cluster, "demo-office", name, key) | extra
        (tmp_path / name).mkdir()
        daemon = start_daemon(site_copy, tmp_path / name, env=env, speed=speed)
        started.append(daemon)
        try:
            daemon.wait_ready(WAIT_S)
        except AssertionError:
            print("\n".join(daemon.output[-40:]))  # shown on failure: why it did not start
            raise
        return daemon

    try:
        yield gateway
    finally:
        for daemon in started:
            daemon.close()


def test_a_standby_takes_over_when_the_leader_is_killed(
    start: object, nats_cluster: NatsCluster
) -> None:
    assert callable(start)
    zones: Running = start("zones")  # first: it takes the lease
    first = zones.until(lambda: zones.metric(REVISION), "zones leads", WAIT_S)
    devices: Running = start("devices")
    # The standby does not run a coordinator: it refuses what only a coordinator can do.
    status, body = devices.post_json("/api/demand-response", CALL)
    assert status == 503, body
    devices.until(lambda: devices.json("/healthz")["leader"] == "zones", "devices sees zones lead")
    assert devices.metric(REVISION) == 0
    zones.until(lambda: zones.metric(REVISION) > first, "zones renews its lease", WAIT_S)
    # An event the leader negotiates with the zones (on the other gateway) and awards.
    status, body = zones.post_json("/api/demand-response", CALL)
    assert status == 202, body
    conversation = body["conversation_id"]

    def awarded() -> dict[str, Any] | None:
        run = run_of(zones, conversation)
        return run if run is not None and run["state"] in IN_FORCE and run["awarded"] else None

    before = zones.until(awarded, "the event awarded", WAIT_S)
    # Mirrored as the award was saved (a leader killed before that would leave it to the
    # zones alone, which keep their commitments); checked here so the kill comes after.
    zones.until(lambda: conversation in mirrored(nats_cluster), "the award in the bucket", WAIT_S)
    last = zones.metric(REVISION)

    zones.proc.kill()  # SIGKILL: no goodbye, the lease is left to age out
    killed = time.monotonic()
    taken = devices.until(lambda: devices.metric(REVISION), "devices took the lease", WAIT_S)
    took_s = time.monotonic() - killed
    assert taken > last  # the key was written after the dead leader's last renewal
    devices.wait_for_output("this gateway leads")
    after = devices.until(lambda: run_of(devices, conversation), "the event on devices", WAIT_S)
    assert after["state"] in IN_FORCE
    assert set(after["awarded"]) == set(before["awarded"])
    assert after["target_w"] == before["target_w"]
    # Both tell who leads (healthz, STATUS=); the new coordinator answers requests.
    health = devices.json("/healthz")
    assert (health["gateway"], health["leader"]) == ("devices", "devices")
    assert re.search(r"gateway devices \(8 zones, \d+ devices here\), coordinator on devices",
                     health["status"]), health  # fmt: skip
    # Who owns what: the API and ``buildingd status`` (from the API) say the same.
    site = devices.json("/api/gateways")
    owned = {g["id"]: (g["leads"], len(g["zones"]), bool(g["devices"])) for g in site["gateways"]}
    assert owned == {"devices": (True, 8, True), "zones": (False, 0, False)}
    assert site["leader"] == "devices" and site["cut_off"] is False
    status_cli = [sys.executable, "-m", "buildingd", "status", "--url", devices.base]
    shown = subprocess.run(status_cli, capture_output=True, text=True, timeout=60,
                           check=True).stdout  # fmt: skip
    assert re.search(r"\*devices\s+leads\s+\d+\s+f1-", shown), shown
    assert re.search(r" zones\s+standby\s+0", shown), shown
    assert "gateway devices; coordinator on devices" in shown
    status, body = devices.post_json("/api/demand-response", CALL)
    assert status != 503, body
    print(f"takeover {took_s:.1f} s after SIGKILL (lease TTL 6 s, revision {last:g} -> {taken:g})")


def test_a_request_retried_with_its_idempotency_key_on_the_new_leader_opens_nothing_new(
    start: object, nats_cluster: NatsCluster
) -> None:
    """A client whose leader died as it answered (or that timed out) sends the same request
    with the same ``Idempotency-Key`` to the next leader: it gets the event the first opened,
    not a second one; the key on another request is refused there too (the key's request is in
    the site's KV bucket with the event)."""
    assert callable(start)
    zones: Running = start("zones")  # first: it takes the lease
    zones.until(lambda: zones.metric(REVISION), "zones leads", WAIT_S)
    devices: Running = start("devices")
    devices.until(lambda: devices.json("/healthz")["leader"] == "zones", "devices sees zones lead")
    key = {"Idempotency-Key": '"grid-2026-12-08T16"'}

    def request(daemon: Running, call: dict[str, Any]) -> tuple[int, Any]:
        return daemon.post("/api/demand-response", daemon.token, json.dumps(call).encode(), key)

    status, first = request(zones, CALL)
    assert status == 202, first
    conversation = first["conversation_id"]
    zones.until(lambda: conversation in mirrored(nats_cluster), "the event in the bucket", WAIT_S)
    zones.proc.kill()
    devices.until(lambda: devices.metric(REVISION), "devices took the lease", WAIT_S)
    devices.wait_for_output("this gateway leads")
    assert request(devices, CALL) == (202, first)
    status, body = request(devices, {**CALL, "target_w": 3000})
    assert status == 422 and "different request" in json.dumps(body), body
    runs = devices.json("/api/negotiations")
    assert [r["conversation_id"] for r in runs] == [conversation], runs


def commitments(daemon: Running) -> dict[str, list[str]]:
    """The demand-response conversations each zone run by ``daemon`` keeps in force."""
    return {z["id"]: z.get("commitments", []) for z in daemon.json("/api/zones")}


def reset_setpoint(daemon: Running) -> float:
    state = daemon.json("/api/coordinator")
    return float(next(r["setpoint"] for r in state["resets"] if r["air_handler"] == "ahu1"))


def mqtt_publish(port: int, topic: str, payload: dict[str, Any]) -> None:
    import aiomqtt

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.publish(topic, json.dumps(payload), qos=1)

    asyncio.run(publish())


def test_votes_resets_and_a_request_sent_meanwhile_survive_the_leader(
    start: object, nats_cluster: NatsCluster
) -> None:
    assert callable(start)
    zones: Running = start("zones")
    zones.until(lambda: zones.metric(REVISION), "zones leads", WAIT_S)
    mqtt_port = free_port()
    devices: Running = start("devices", BUILDINGD_MQTT__PORT=str(mqtt_port))
    devices.until(lambda: devices.json("/healthz")["leader"] == "zones", "devices sees zones lead")
    # Occupants of the reception vote "too cold" twice: the leader settles +0.5 K.
    for _ in range(2):
        status, body = zones.post_json("/api/zones/f1-reception/vote", {"vote": "cold"})
        assert status == 200, body
    votes = lambda d: d.json("/api/coordinator")["votes_offset_k"].get("f1-reception")  # noqa: E731
    offset = zones.until(lambda: votes(zones), "the votes settled", WAIT_S)
    assert offset > 0
    # The reset is under way: trimmed up from SP0 (15 degC) past its delay.
    zones.until(lambda: reset_setpoint(zones) >= 15.3, "the reset trimming up", WAIT_S)

    def carried() -> dict[str, Any]:
        text = mirrored(nats_cluster, "carried")
        return json.loads(text) if text else {}

    def bucket_has_both() -> float | None:
        state = carried()
        sat = [r["setpoint"] for r in state.get("air_handlers", []) if r["air_handler"] == "ahu1"]
        if state.get("votes", {}).get("f1-reception", {}).get("offset_k") != offset:
            return None
        return sat[0] if sat and sat[0] >= 15.3 else None

    zones.until(bucket_has_both, "votes and reset in the bucket", WAIT_S)
    zones.proc.kill()
    # While nobody leads: a demand-response request over MQTT at the standby.
    reason = "grid operator call while the leader was down"
    mqtt_publish(mqtt_port, "buildingd/demo-office/demand-response/request",
                 {"target_w": 1500, "window_s": 1800, "reason": reason})  # fmt: skip
    devices.until(lambda: devices.metric(REVISION), "devices took the lease", WAIT_S)
    devices.wait_for_output("took over 1 zone vote box")
    # The offset the occupants voted for is the new coordinator's; the reset goes on from
    # where it was (not back to 15 degC through the delay).
    assert votes(devices) == offset
    kept = bucket_has_both()
    assert kept is not None
    assert reset_setpoint(devices) >= kept
    status, body = devices.post_json("/api/zones/f1-reception/vote", {"vote": "cold"})
    assert body["offset_k"] == offset, body

    def opened() -> set[str]:
        """The conversations the new leader opened for that request (from its audit lines)."""
        return {m.group(1) for line in devices.output if reason in line
                and (m := re.search(r"outcome=collecting conversation=(\w+)", line))}  # fmt: skip

    conversation = devices.until(opened, "the request sent meanwhile on the new leader", WAIT_S)
    # Once: the stream kept it for the coordinator's queue, the new leader took it.
    devices.until(lambda: (run_of(devices, min(conversation)) or {}).get("awarded"),
                  "the request's event awarded", WAIT_S)  # fmt: skip
    assert len(opened()) == 1


def test_a_leader_paused_past_its_lease_is_fenced(start: object, nats_cluster: NatsCluster) -> None:
    assert callable(start)
    zones: Running = start("zones")
    zones.until(lambda: zones.metric(REVISION), "zones leads", WAIT_S)
    devices: Running = start("devices")
    devices.until(lambda: devices.json("/healthz")["leader"] == "zones", "devices sees zones lead")
    zones.until(lambda: reset_setpoint(zones) >= 15.1, "the reset trimming up", WAIT_S)
    zones.proc.send_signal(signal.SIGSTOP)
    try:
        devices.until(lambda: devices.metric(REVISION), "devices took the lease", WAIT_S)
        devices.wait_for_output("this gateway leads")
        # An override sent to the paused leader: handled (if at all) only after SIGCONT.
        wanted = devices.json("/api/zones/f1-meeting")["heating_sp_c"] + 1.0
        answers: list[tuple[int, Any]] = []
        sender = threading.Thread(target=lambda: answers.append(zones.post_json(
            "/api/zones/f1-meeting/override", {"heating_sp_c": wanted})))  # fmt: skip
        sender.start()
    finally:
        zones.proc.send_signal(signal.SIGCONT)
    sender.join(60)
    zones.wait_for_output("this gateway no longer leads")
    # Its coordinator stopped; whatever it sent as the coordinator after waking was dropped.
    status, body = answers[0]
    fenced = zones.metric("buildingd_bus_fenced_total")
    assert status == 503 or fenced > 0, (status, body, fenced)
    refused = zones.metric("buildingd_coordinator_state_refused_total")
    print(f"override {status}: {body}; fenced {fenced:g}, state writes refused {refused:g}")
    # The zone (on devices) got no adjustment for that override, and the bucket holds the
    # new leader's state (a write the deposed one tried was refused).
    zone = devices.json("/api/zones/f1-meeting")
    assert zone["heating_sp_c"] != wanted, zone
    # The woken gateway learns who leads from the lease bucket (a moment after it lost it).
    zones.until(lambda: zones.json("/healthz")["leader"] == "devices", "zones sees devices lead")
    devices.until(lambda: json.loads(mirrored(nats_cluster, "carried") or "{}").get("by")
                  == "devices", "the new leader's state in the bucket", WAIT_S)  # fmt: skip
    zones.until(lambda: reset_setpoint(devices) > 0, "devices runs the reset", WAIT_S)
    assert json.loads(mirrored(nats_cluster, "carried"))["by"] == "devices"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["pause", "kill"])
def test_a_gateway_cut_off_runs_its_zones_alerts_once_and_rejoins_without_doubles(
    start: object, nats_cluster: NatsCluster, site_copy: Path, how: str
) -> None:
    """``devices`` (all the zones and devices) talks to node 0 only and leads; node 0 is
    SIGSTOPped (its connection stays open, nothing answers) or SIGKILLed (and restarted):
    devices is cut off, ``zones`` takes the lease with the event in force."""
    assert callable(start)
    devices: Running = start("devices", BUILDINGD_NATS__SERVERS=json.dumps(nats_cluster.urls[:1]))
    devices.until(lambda: devices.metric(REVISION), "devices leads", WAIT_S)
    zones: Running = start("zones")
    zones.until(lambda: zones.json("/healthz")["leader"] == "devices", "zones sees devices lead")
    status, body = devices.post_json("/api/demand-response", {**CALL, "window_s": 4 * 3600})
    assert status == 202, body
    conversation = body["conversation_id"]

    def awarded() -> dict[str, Any] | None:
        run = run_of(devices, conversation)
        return run if run is not None and run["state"] in IN_FORCE and run["awarded"] else None

    shedding = set(devices.until(awarded, "the event awarded", WAIT_S)["awarded"])
    devices.until(lambda: conversation in mirrored(nats_cluster), "the award in the bucket", WAIT_S)

    devices.until(lambda: all(commitments(devices)[z] == [conversation] for z in shedding),
                  "the zones committed", WAIT_S)  # fmt: skip
    commands = devices.metric("buildingd_commands_total")

    (nats_cluster.pause if how == "pause" else nats_cluster.kill)(0)
    devices.wait_for_output("cut off from the NATS cluster", timeout_s=WAIT_S)
    zones.until(lambda: zones.metric(REVISION), "zones took the lease", WAIT_S)
    # One alert, in the API and the status line; the zones go on by their policies, inside
    # their safety bands, with their commitment.
    cut = [a for a in devices.json("/api/alerts") if a.get("gateway") == "devices"]
    assert len(cut) == 1 and "cut off" in cut[0]["cause"], cut
    assert "cut off from the NATS cluster" in devices.json("/healthz")["status"]
    devices.until(lambda: devices.metric("buildingd_commands_total") > commands,
                  "zones commanding their devices while cut off", WAIT_S)  # fmt: skip
    site = load_site(site_copy)
    for zone in devices.json("/api/zones"):
        safety = site.policy_for(zone["id"]).safety
        assert safety.min_c <= zone["heating_sp_c"] <= zone["cooling_sp_c"] <= safety.max_c, zone
        if zone["id"] in shedding:
            assert zone["commitments"] == [conversation]
    assert devices.metric("buildingd_gateway_cut_off") == 1
    assert devices.metric(REVISION) == 0  # its coordinator stopped: the lease ran out

    (nats_cluster.resume if how == "pause" else nats_cluster.restart)(0)
    devices.wait_for_output("back in the NATS cluster", timeout_s=WAIT_S)
    devices.until(lambda: not [a for a in devices.json("/api/alerts") if a.get("gateway")],
                  "the alert gone", WAIT_S)  # fmt: skip
    assert "cut off" not in devices.json("/healthz")["status"]
    # Nothing doubled: the new leader has the one event in force, the zones one commitment
    # each for it, and the partition was told once (and its end once).
    after = zones.until(lambda: run_of(zones, conversation), "the event on zones", WAIT_S)
    assert after["state"] in IN_FORCE and set(after["awarded"]) == shedding
    in_force = [r for r in zones.json("/api/negotiations") if r["state"] in IN_FORCE]
    assert [r["conversation_id"] for r in in_force].count(conversation) == 1
    assert all(commitments(devices)[z] == [conversation] for z in shedding)
    told = [line for line in devices.output if "cut off from the NATS cluster:" in line]
    assert len(told) == 1, told
    assert len([line for line in devices.output if "back in the NATS cluster" in line]) == 1
    escalations = [a["escalation"] for a in zones.json("/api/alerts") if "escalation" in a]
    assert len(escalations) == len(set(escalations)), escalations


async def _leaders(js: Any, streams: list[str]) -> dict[str, str]:
    """The node leading each of ``streams``, waited for while one is electing (its stream
    info then times out or names no leader)."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + WAIT_S
    while len(found) < len(streams):
        for stream in set(streams) - set(found):
            with contextlib.suppress(nats.errors.Error):
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    found[stream] = info.cluster.leader
        assert time.monotonic() < deadline, f"no leader for {set(streams) - set(found)}"
        await asyncio.sleep(0.2)
    return found


def leaders(cluster: NatsCluster, streams: list[str],
            wanted: Callable[[str], bool] | None = None) -> dict[str, str]:  # fmt: skip
    """The node leading each of ``streams``; with ``wanted``, the first stream's leader is
    first asked to step down (JetStream API ``STREAM.LEADER.STEPDOWN``: its peers elect
    another) until a node ``wanted`` leads it."""

    async def find() -> dict[str, str]:
        nc = await nats.connect(servers=cluster.urls, user=ADMIN.name, password=ADMIN.password)
        try:
            js = nc.jetstream(timeout=5)
            stream = streams[0]
            for _ in range(30):
                leader = (await _leaders(js, [stream]))[stream]
                if wanted is None or wanted(leader):
                    return await _leaders(js, streams)
                with contextlib.suppress(nats.errors.Error):  # answered or not: look again
                    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
                until = time.monotonic() + WAIT_S  # until another node has taken over
                while (await _leaders(js, [stream]))[stream] == leader:
                    assert time.monotonic() < until, f"{leader} still leads {stream}"
                    await asyncio.sleep(0.2)
            raise AssertionError(f"no wanted leader for {stream} after 30 step-downs")
        finally:
            await nc.close()

    return asyncio.run(find())


@pytest.mark.parametrize("layout", ["shared", "apart"])
def test_no_award_lost_or_doubled_when_the_stream_leader_dies_during_an_event(
    start: object, nats_cluster: NatsCluster, layout: str
) -> None:
    """At speed 1, so the zones' 30 s to answer a call outlasts NATS' 4-9 s election.
    ``shared``: the killed node leads the command stream *and* the lease bucket, so the lease
    lapses during the election and the event, opened and not awarded, has to be taken up by
    the next coordinator from the site's state bucket (it was lost with the old one before
    open negotiations were mirrored). ``apart``: the lease bucket is led elsewhere, the
    coordinator stays, only the commands wait for the election."""
    assert callable(start)
    zones: Running = start("zones", speed=1.0)
    zones.until(lambda: zones.metric(REVISION), "zones leads", WAIT_S)
    devices: Running = start("devices", speed=1.0)
    devices.until(lambda: devices.json("/healthz")["leader"] == "zones", "devices sees zones lead")
    commands, lease = stream_name("demo-office"), f"KV_{lease_bucket('demo-office')}"
    doomed = leaders(nats_cluster, [commands])[commands]
    leaders(nats_cluster, [lease], lambda node: (node == doomed) == (layout == "shared"))

    def leader() -> Running:
        return zones if zones.json("/healthz")["leader"] == "zones" else devices

    # The step-downs may have cost the lease a renewal: whoever leads renews before the call.
    head = leader()
    revision = head.until(lambda: head.metric(REVISION), "a leader", WAIT_S)
    head.until(lambda: head.metric(REVISION) > revision, "the leader renews its lease", WAIT_S)
    state = f"KV_{state_bucket('demo-office')}"
    led = leaders(nats_cluster, [commands, lease, state])
    assert (led[commands] == led[lease]) == (layout == "shared"), led
    assert led[commands] == doomed, led
    status, body = head.post_json("/api/demand-response", CALL)
    assert status == 202, body  # answered once the event is in the state bucket
    conversation = body["conversation_id"]
    killed = [n.name for n in nats_cluster.nodes].index(doomed)
    nats_cluster.kill(killed)  # the calls for proposals are on their way to the zones

    def awarded() -> dict[str, Any] | None:
        run = run_of(leader(), conversation)
        return run if run is not None and run["state"] in IN_FORCE and run["awarded"] else None

    run = devices.until(awarded, "the event awarded across the election", WAIT_S)
    shedding = set(run["awarded"])
    devices.until(lambda: all(commitments(devices)[z] == [conversation] for z in shedding),
                  "the zones committed", WAIT_S)  # fmt: skip
    # Nothing lost (every message published), nothing doubled (one commitment per zone, the
    # event once among the leader's negotiations; a message NATS delivered again after its
    # acknowledgement was lost in the election is refused as a replay, never acted on twice;
    # nothing refused for any other reason).
    in_force = [r for r in leader().json("/api/negotiations") if r["state"] in IN_FORCE]
    assert [r["conversation_id"] for r in in_force].count(conversation) == 1, in_force
    assert all(commitments(devices)[z] == [conversation] for z in shedding)
    for daemon in (zones, devices):
        assert daemon.metric("buildingd_bus_unpublished_total") == 0
        refused = re.findall(r'^buildingd_bus_refused_total\{reason="([^"]+)"\} (\S+)$',
                             daemon.json("/metrics"), re.M)  # fmt: skip
        print(f"refused on {daemon.env['BUILDINGD_GATEWAY__ID']}: {refused}")
        assert {reason for reason, _ in refused} <= {"replayed"}, refused
    lapsed = any("no longer leads" in line for line in head.output)
    reopened = any("re-opened" in line for d in (zones, devices) for line in d.output)
    print(f"{layout}: {doomed} killed leading {[s for s, n in led.items() if n == doomed]}; "
          f"lease lapsed: {lapsed}; re-opened: {reopened}; {run}")  # fmt: skip

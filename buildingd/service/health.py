"""Health of the running daemon: which agents are stuck (the watchdog's ``control`` heartbeat),
open alerts, the STATUS= line, the ``daemon`` telemetry measurement, and the housekeeping task
that sends them. Reads the daemon's agents; starts and stops nothing."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from buildingd.agents.runtime import ChildState
from buildingd.agents.zone import CONTROL_INTERVAL_S
from buildingd.service.sdnotify import WatchdogGuard
from buildingd.telemetry.schema import daemon_line

if TYPE_CHECKING:
    from buildingd.service.app import Daemon

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 60.0  # daemon health to telemetry, real seconds


class Health:
    """The daemon's health views and its housekeeping loop (STATUS=, WATCHDOG=1, telemetry)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.watchdog: WatchdogGuard | None = None
        self._stuck_reported: set[str] = set()

    async def housekeeping(self) -> None:
        """Every few real seconds: STATUS= for systemd, and WATCHDOG=1 while alive."""
        daemon = self.daemon
        interval = daemon.notifier.watchdog_interval_s()
        if interval is not None:
            self.watchdog = WatchdogGuard(daemon.notifier, interval)
            # The control loop must tick: the slowest zone decides at least every
            # CONTROL_INTERVAL_S simulated seconds; allow three intervals plus slack.
            self.watchdog.register(
                "control", 3 * daemon.clock.to_loop_seconds(CONTROL_INTERVAL_S) + 2 * interval
            )
        next_health = 0.0
        while True:
            if self.watchdog is not None:
                if self.control_alive():
                    self.watchdog.heartbeat("control")
                self.watchdog.tick()
            daemon.notifier.status(self.status_summary())
            now = asyncio.get_running_loop().time()
            if daemon.sink is not None and now >= next_health:
                next_health = now + HEALTH_INTERVAL_S
                gateway = None if daemon.site.gateways.single else daemon.election.gateway_id
                line = daemon_line(daemon.site.site_id, self.measurement(), daemon.clock.now(),
                                   gateway)  # fmt: skip
                daemon.sink.submit([line])
            await asyncio.sleep(interval if interval is not None else 5.0)

    def measurement(self) -> dict[str, float | None]:
        """The ``daemon`` telemetry measurement (see ``telemetry.schema``)."""
        daemon = self.daemon
        sink = daemon.sink.stats() if daemon.sink is not None else {}
        return {
            "uptime_s": asyncio.get_running_loop().time() - daemon.loop_started,
            "zones_degraded": sum(1 for a in daemon.zone_agents.values() if a.degraded),
            "devices_up": sum(1 for a in daemon.device_agents.values() if a.available),
            "devices_down": sum(1 for a in daemon.device_agents.values() if a.available is False),
            "alerts": len(self.open_alerts()),
            "bus_messages": daemon.bus.stats.total,
            "telemetry_pending": sink.get("pending"),
            "telemetry_buffered": sink.get("buffer_points"),
            "telemetry_dropped": sum(v for k, v in sink.items() if k.startswith("dropped")),
            "rss_mb": resident_mb(),
        }

    def stuck_agents(self) -> dict[str, str]:
        """Running agents that stopped making progress, by name, with why: a zone that has not
        decided for three control intervals plus ``zone_slack_s``, a device agent that has
        not started a poll for three poll intervals plus ``poll_slack_s`` (a read or a write
        that never returns, or a wedged agent loop). Intervals are in the daemon's clock
        (simulated under ``--speed``), slacks in real seconds (driver timeouts are real).

        Only agents the supervisor has running count: one restarting after a crash is not
        stuck, and one it gave up on is already an open alert (``open_alerts``); restarting
        the whole daemon over it would stop every other zone too. Agents that have not
        decided or polled yet count as alive: both do so as soon as they are started."""
        daemon = self.daemon
        sup = daemon.supervisor
        if sup is None:
            return {}

        def running(name: str) -> bool:
            child = sup.children.get(name)
            return child is not None and child.state is ChildState.RUNNING

        now = daemon.clock.monotonic()
        loop_s = daemon.clock.to_loop_seconds
        out: dict[str, str] = {}
        for zone_id, zone in daemon.zone_agents.items():
            name = f"zone[{zone_id}]"
            if zone.last_control_s is None or not running(name):
                continue
            age_s = loop_s(now - zone.last_control_s)
            allowed_s = loop_s(3 * CONTROL_INTERVAL_S) + daemon.zone_slack_s
            if age_s > allowed_s:
                out[name] = f"no decision for {age_s:.1f} s (allowed {allowed_s:.1f} s)"
        for device_id, dev in daemon.device_agents.items():
            name = f"device[{device_id}]"
            if dev.last_poll_s is None or not running(name):
                continue
            age_s = loop_s(now - dev.last_poll_s)
            allowed_s = loop_s(3 * dev.device.poll_interval_s) + daemon.poll_slack_s
            if age_s > allowed_s:
                what = "a read in flight" if dev.poll_stuck_since(now) > 0 else "no poll started"
                out[name] = f"{what} for {age_s:.1f} s (allowed {allowed_s:.1f} s)"
        return out

    def control_alive(self) -> bool:
        """True when no zone or poller is stuck (see ``stuck_agents``). Logs each stuck agent
        once when first seen and once when it makes progress again, so the journal says what
        the watchdog restart was about."""
        stuck = self.stuck_agents()
        for name, why in stuck.items():
            if name not in self._stuck_reported:
                log.error("watchdog: %s stuck: %s; withholding WATCHDOG=1", name, why)
        for name in sorted(self._stuck_reported - stuck.keys()):
            log.info("watchdog: %s is making progress again", name)
        self._stuck_reported = set(stuck)
        return not stuck

    def status_summary(self) -> str:
        daemon = self.daemon
        zones = len(daemon.site.zones)
        degraded = sum(1 for a in daemon.zone_agents.values() if a.degraded)
        up = sum(1 for a in daemon.device_agents.values() if a.available)
        down = sum(1 for a in daemon.device_agents.values() if a.available is False)
        alerts = len(self.open_alerts())
        line = (
            f"{zones} zones ({degraded} degraded), devices {up} up/{down} down, "
            f"{alerts} alerts open"
        )
        if not daemon.site.gateways.single:  # a site over gateways: who leads (issue 19)
            leader = daemon.election.leader() or "none known yet"
            me, gmap = daemon.election.gateway_id, daemon.site.gateways
            mine = sum(1 for g in gmap.zone_gateway.values() if g == me)
            here = sum(1 for g in gmap.device_gateway.values() if g == me)
            line += (f"; gateway {me} ({mine} zones, {here} devices here), "
                     f"coordinator on {leader}")  # fmt: skip
            if self._cut_off():
                line += "; cut off from the NATS cluster"
        reloading = daemon.reloading
        if reloading.restart_needed:
            line += f"; restart needed for {', '.join(reloading.restart_needed)}"
        if reloading.problem is not None:
            line += f"; reload failed, running the previous configuration: {reloading.problem}"
        return line[:400]

    def _cut_off(self) -> bool:
        nats = self.daemon.nats
        return nats is not None and nats.partition is not None and nats.partition.cut_off

    def open_alerts(self) -> list[dict[str, object]]:
        """Current problems: degraded zones, unavailable devices, agents given up on, this
        gateway cut off from the others."""
        daemon = self.daemon
        out: list[dict[str, object]] = []
        for zone_id, agent in daemon.zone_agents.items():
            for what in sorted(agent.degraded):
                out.append({"zone": zone_id, "cause": f"{what} unavailable"})
        for device_id, dev in daemon.device_agents.items():
            if dev.available is False:
                out.append({"device": device_id, "cause": "device unavailable"})
        if daemon.supervisor is not None:
            for child in daemon.supervisor.children.values():
                if child.state is ChildState.FAILED:
                    out.append({"agent": child.name, "cause": child.last_error})
        if self._cut_off():
            partition = daemon.nats.partition if daemon.nats is not None else None
            problem = partition.last_problem if partition is not None else ""
            out.append({"gateway": daemon.election.gateway_id,
                        "cause": f"cut off from the NATS cluster: {problem}"})  # fmt: skip
        if daemon.coordinator is not None:
            for esc in daemon.coordinator.open_escalations():
                out.append({"id": esc.id, "escalation": esc.message, "contacts": esc.contacts,
                            "acknowledge": f"POST /api/alerts/{esc.id}/ack"})  # fmt: skip
        return out


def resident_mb() -> float | None:
    """Current resident set size (Linux), for the health measurement."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6

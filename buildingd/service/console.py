"""What ``buildingd run`` shows: a live zone table on a terminal, plain status lines otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Protocol

from buildingd.service.app import Daemon

log = logging.getLogger(__name__)


def zone_table(daemon: Daemon) -> list[str]:
    head = (
        f"{'zone':<18}{'mode':<11}{'temp':>7}{'RH':>6}{'occ':>5}{'lux':>7}{'light':>7}"
        f"{'heat sp':>9}{'cool sp':>9}"
    )
    lines = [head]
    for zone_id in daemon.site.zones:
        agent = daemon.zone_agents.get(zone_id)
        if agent is None or agent.decision is None:
            lines.append(f"{zone_id:<18}starting")
            continue
        i = agent.inputs()
        d = agent.decision

        def num(v: float | None, spec: str) -> str:
            return "?" if v is None else format(v, spec)

        occ = "?" if i.occupied is None else ("yes" if i.occupied else "no")
        lines.append(
            f"{zone_id:<18}{d.state.mode.value:<11}{num(i.temperature_c, '.1f'):>7}"
            f"{num(i.humidity_pct, '.0f'):>6}{occ:>5}{num(i.illuminance_lux, '.0f'):>7}"
            f"{d.state.light_level_pct:>6.0f}%{d.band.heating_c:>9.1f}{d.band.cooling_c:>9.1f}"
        )
    return lines


def status_line(daemon: Daemon) -> str:
    up = sum(1 for a in daemon.device_agents.values() if a.available)
    down = sum(1 for a in daemon.device_agents.values() if a.available is False)
    local = daemon.clock.now().astimezone(_tz(daemon.site.timezone))
    return (
        f"{local:%a %Y-%m-%d %H:%M} {daemon.site.site_id}: {len(daemon.site.zones)} zones, "
        f"devices {up} up/{down} down, {daemon.bus.stats.total} bus messages"
    )


def _tz(name: str):  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


class Output(Protocol):
    def isatty(self) -> bool: ...

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


async def show(daemon: Daemon, out: Output = sys.stdout, interval_s: float = 1.0) -> None:
    """Redraw the table on a terminal; log a status line (and the zones) every minute otherwise."""
    await daemon.ready.wait()
    tty = out.isatty()
    ticks = 0
    while True:
        if tty:
            out.write("\x1b[H\x1b[2J" + status_line(daemon) + "\n\n")
            out.write("\n".join(zone_table(daemon)) + "\n")
            out.flush()
        elif ticks % 60 == 0:
            log.info("%s", status_line(daemon))
            for line in zone_table(daemon)[1:]:
                log.info("zone %s", line)
        ticks += 1
        await asyncio.sleep(interval_s)

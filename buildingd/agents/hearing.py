"""Whom an agent may hear from over a bus between processes: a device agent takes commands only
from its own zones' agents and the coordinator; a zone agent takes calls, awards and adjustments
only from the coordinator (and command results from its own devices); and so on. Pure: a
function of the envelope and the site. (In one process every sender is an agent we started.)"""

from __future__ import annotations

import re

from buildingd.agents.bus import Envelope
from buildingd.agents.messages import COORDINATOR, DEMAND_RESPONSE_TOPIC
from buildingd.config.loader import Site

SERVICE_SENDERS = frozenset({COORDINATOR, "mqtt-bridge", "telemetry", "supervisor", "daemon"})
ADDRESS = re.compile(r"(zone|device)\[(.+)\]\Z")


def _parts(address: str) -> tuple[str, str] | None:
    match = ADDRESS.match(address)
    return (match.group(1), match.group(2)) if match else None


def device_zones(site: Site, device_id: str) -> set[str]:
    device = site.devices.get(device_id)
    points = device.points_list() if device is not None else []
    return {p.zone for p in points if p.zone is not None}


def hearing_problem(env: Envelope, site: Site) -> str | None:
    """Why ``env.receiver`` may not hear this from ``env.sender``, or None when it may. Readings,
    states and events on topics may come from any agent of the right shape (a device declared
    only on another gateway included); what reaches a device, a zone or the coordinator comes
    only from those the receiver works with."""
    sender, receiver = env.sender, env.receiver
    who = _parts(sender)
    if sender not in SERVICE_SENDERS and who is None:
        return f"{sender} is not an agent address"
    to = _parts(receiver)
    if to is not None and to[0] == "device":
        allowed = {COORDINATOR, *(f"zone[{z}]" for z in device_zones(site, to[1]))}
        if sender not in allowed:
            return f"{receiver} takes commands only from {', '.join(sorted(allowed))}"
    elif to is not None and to[0] == "zone":
        own_devices = who is not None and who[0] == "device" and to[1] in device_zones(site, who[1])
        if sender != COORDINATOR and not own_devices:
            return f"{receiver} hears only from the coordinator and its own devices"
    elif receiver == COORDINATOR:
        known = who is not None and (who[1] in site.zones if who[0] == "zone"
                                     else who[1] in site.devices)  # fmt: skip
        if sender != "mqtt-bridge" and not known:
            return f"the coordinator hears from the site's zones and devices, not {sender}"
    elif receiver == DEMAND_RESPONSE_TOPIC and sender != "mqtt-bridge":
        return "demand-response requests come from the MQTT bridge"
    elif env.ontology == "command":
        return "commands go to a device agent"
    elif who is not None and who[0] == "zone" and who[1] not in site.zones:
        return f"{sender} is not a zone of site {site.site_id}"
    return None

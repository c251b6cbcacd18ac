"""``buildingd status``: a readable table of the running daemon, from its HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def fetch(base: str, path: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(base + path, timeout=timeout_s) as response:
        return json.loads(response.read())


def print_gateways(site: dict[str, Any]) -> None:
    """One line per gateway: its role, its zones and how many devices it runs."""
    print()
    cut = " (CUT OFF from the NATS cluster)" if site.get("cut_off") else ""
    print(f"gateway {site['gateway']}{cut}; coordinator on {site.get('leader') or 'nobody known'}")
    print(f"{'gateway':<16}{'role':<12}{'devices':>8}  zones")
    for g in site["gateways"]:
        role = "leads" if g["leads"] else ("standby" if g["candidate"] else "-")
        here = "*" if g["id"] == site["gateway"] else " "
        print(f"{here}{g['id']:<15}{role:<12}{len(g['devices']):>8}  {', '.join(g['zones'])}")


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="buildingd status")
    parser.add_argument("--url", default="http://127.0.0.1:8750", help="the daemon's HTTP endpoint")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        health = fetch(base, "/healthz")
    except urllib.error.HTTPError as err:
        health = json.loads(err.read() or b"{}")
    except (urllib.error.URLError, OSError) as err:
        print(f"buildingd is not answering at {base}: {err}", file=sys.stderr)
        return 1
    zones = fetch(base, "/api/zones")
    devices = fetch(base, "/api/devices")
    alerts = fetch(base, "/api/alerts")
    print(f"buildingd: {'ready' if health.get('ready') else 'NOT READY'}; {health.get('status')}")
    print()
    print(
        f"{'zone':<18}{'mode':<11}{'temp':>7}{'RH':>6}{'occ':>5}{'light':>7}"
        f"{'heat sp':>9}{'cool sp':>9}  degraded"
    )

    def num(v: Any, spec: str) -> str:
        return "?" if v is None else format(v, spec)

    def rate(v: Any) -> str:
        return "learning" if v is None else f"{v:+.1f}K/h"

    for z in zones:
        occ = "?" if z.get("occupied") is None else ("yes" if z["occupied"] else "no")
        light = z.get("light_level_pct")
        print(
            f"{z['id']:<18}{z.get('mode', '?'):<11}{num(z.get('temperature_c'), '.1f'):>7}"
            f"{num(z.get('humidity_pct'), '.0f'):>6}{occ:>5}"
            f"{num(light, '.0f') + '%' if light is not None else '?':>7}"
            f"{num(z.get('heating_sp_c'), '.1f'):>9}{num(z.get('cooling_sp_c'), '.1f'):>9}"
            f"  {', '.join(z.get('degraded', []))}"
        )
    learned = [(z["id"], z["learned"]) for z in zones if z.get("learned")]
    if learned:
        print()
        print(f"{'zone':<18}{'heats':>8}{'cools':>8}{'start fix':>10}{'next start':>18}  arrival")
    for zone_id, got in learned:
        start = (got.get("next_optimal_start") or "")[5:16].replace("T", " ")
        arrival = (got.get("expected_arrival") or "")[11:16]
        print(
            f"{zone_id:<18}{rate(got.get('heating_k_per_h')):>8}{rate(got.get('cooling_k_per_h')):>8}"
            f"{num(got.get('start_bias_min'), '+.0f') + ' min':>10}{start:>18}  "
            f"{arrival or '-'}{'' if got.get('arrival_confident') else ' (learning)'}"
        )
    if "gateway" in health:  # a site over gateways: who owns what, who leads
        print_gateways(fetch(base, "/api/gateways"))
    down = [d["id"] for d in devices if d.get("available") is False]
    print()
    print(f"devices: {len(devices) - len(down)} up, {len(down)} down {down if down else ''}")
    print(f"alerts open: {len(alerts)}")
    for alert in alerts:
        print("  " + ", ".join(f"{k}={v}" for k, v in alert.items()))
    return 0

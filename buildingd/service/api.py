"""Routes of the HTTP endpoint over a running daemon: health, Prometheus metrics, the read-only
JSON API (zones, devices, alerts) and the token-protected writes."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from buildingd.agents.messages import DemandResponseCall
from buildingd.coordinator.requests import record_refusal, request_error
from buildingd.errors import RequestRefusedError
from buildingd.service.http import HttpError, HttpServer, Request, Response
from buildingd.service.prometheus import metrics_text

if TYPE_CHECKING:
    from buildingd.coordinator.agent import CoordinatorAgent
    from buildingd.service.app import Daemon


def zones_json(daemon: Daemon) -> list[dict[str, Any]]:
    out = []
    for zone_id, zone in daemon.site.zones.items():
        agent = daemon.zone_agents.get(zone_id)
        entry: dict[str, Any] = {"id": zone_id, "name": zone.name, "floor": zone.floor}
        entry["policy"] = daemon.site.zone_policy.get(zone_id)
        if agent is not None and agent.decision is not None:
            i, d = agent.inputs(), agent.decision
            entry.update(
                mode=d.state.mode.value,
                temperature_c=i.temperature_c,
                humidity_pct=i.humidity_pct,
                occupied=i.occupied,
                illuminance_lux=i.illuminance_lux,
                heating_sp_c=d.band.heating_c,
                cooling_sp_c=d.band.cooling_c,
                light_level_pct=d.state.light_level_pct,
                dehumidifier_on=d.state.dehumidifier_on,
                degraded=sorted(agent.degraded),
                coasting=d.coasting,
                learned=agent.learning_summary(),
            )
        else:
            entry["mode"] = "starting"
        out.append(entry)
    return out


def devices_json(daemon: Daemon) -> list[dict[str, Any]]:
    out = []
    for device_id, device in daemon.site.devices.items():
        agent = daemon.device_agents.get(device_id)
        out.append(
            {
                "id": device_id,
                "driver": device.driver,
                "available": agent.available if agent is not None else None,
                "points": len(device.points_list()),
                "poll_interval_s": device.poll_interval_s,
            }
        )
    return out


def install_routes(server: HttpServer, daemon: Daemon) -> None:
    async def healthz(_: Request) -> Response:
        ready = daemon.ready.is_set() and not daemon.stop_requested.is_set()
        body = {"live": True, "ready": ready, "status": daemon.status_summary()}
        return Response.json(body, 200 if ready else HTTPStatus.SERVICE_UNAVAILABLE)

    async def metrics(_: Request) -> Response:
        return Response.text(metrics_text(daemon))

    async def zones(_: Request) -> Response:
        return Response.json(zones_json(daemon))

    async def zone(request: Request) -> Response:
        for entry in zones_json(daemon):
            if entry["id"] == request.params["zone"]:
                return Response.json(entry)
        raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {request.params['zone']!r}")

    async def devices(_: Request) -> Response:
        return Response.json(devices_json(daemon))

    async def alerts(_: Request) -> Response:
        return Response.json(daemon.open_alerts())

    async def agents(_: Request) -> Response:
        sup = daemon.supervisor
        children = list(sup.children.values()) if sup is not None else []
        return Response.json(
            [
                {
                    "name": c.name,
                    "state": c.state.value,
                    "restarts": c.restarts,
                    "started_s": round(c.started_s, 3),
                    "last_error": c.last_error,
                }
                for c in children
            ]
        )

    async def reload(_: Request) -> Response:
        result = await daemon.reload()
        return Response.json(result, 200 if result["ok"] else HTTPStatus.UNPROCESSABLE_ENTITY)

    def coordinator() -> CoordinatorAgent:
        if daemon.coordinator is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the coordinator is not running")
        return daemon.coordinator

    def body_object(request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    async def vote(request: Request) -> Response:
        """An occupant's "too hot" / "too cold" vote: ``{"vote": "hot"}``."""
        zone_id = request.params["zone"]
        if zone_id not in daemon.site.zones:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {zone_id!r}")
        result = coordinator().vote(zone_id, str(body_object(request).get("vote")), "http")
        body = {"accepted": result.accepted, "reason": result.reason, "offset_k": result.offset_k}
        return Response.json(body, 200 if result.accepted else HTTPStatus.UNPROCESSABLE_ENTITY)

    async def override(request: Request) -> Response:
        """A setpoint set by hand: ``{"heating_sp_c": 22.0}`` or ``{"cooling_sp_c": 23.5}``."""
        body = body_object(request)
        keys = [k for k in ("heating_sp_c", "cooling_sp_c") if k in body]
        if len(keys) != 1 or not isinstance(body[keys[0]], int | float):
            raise HttpError(HTTPStatus.BAD_REQUEST, "give one of heating_sp_c or cooling_sp_c")
        zone_id = request.params["zone"]
        if zone_id not in daemon.site.zones:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {zone_id!r}")
        what = keys[0].removesuffix("_c")
        result = coordinator().override(zone_id, what, float(body[keys[0]]), "http")
        await coordinator().flush()
        return Response.json(result, 200 if result["accepted"] else HTTPStatus.UNPROCESSABLE_ENTITY)

    async def reset_learning(request: Request) -> Response:
        """Forget a zone's learned response and occupancy (a refurbished or repurposed room)."""
        agent = daemon.zone_agents.get(request.params["zone"])
        if agent is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {request.params['zone']!r}")
        agent.reset_learning()
        return Response.json({"reset": True, "zone": agent.zone_id})

    async def acknowledge(request: Request) -> Response:
        """Stops an alert's reminders; it stays open until its cause goes away or is cleared."""
        who = str(body_object(request).get("by", "technician"))[:100]
        if not coordinator().acknowledge(request.params["alert"], who):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no open escalation {request.params['alert']!r}")
        await coordinator().flush()  # the retained alert and the webhooks say who, now
        return Response.json({"acknowledged": request.params["alert"], "by": who})

    async def clear(request: Request) -> Response:
        """Closes an alert by hand (a failed agent after a repair, a negotiation that fell
        short); a condition that persists raises a new one after its threshold."""
        who = str(body_object(request).get("by", "technician"))[:100]
        if not coordinator().clear_alert(request.params["alert"], who):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no open escalation {request.params['alert']!r}")
        await coordinator().flush()
        return Response.json({"cleared": request.params["alert"], "by": who})

    async def demand_response(request: Request) -> Response:
        """Open a demand-response event: ``{"target_w": 2000, "window_s": 3600}``."""
        body = body_object(request)
        try:
            call = DemandResponseCall(
                target_w=body.get("target_w"),
                window_s=body.get("window_s", 3600),
                reason=str(body.get("reason", "requested over HTTP"))[:200],
            )
        except ValueError as err:
            why = request_error(err)
            record_refusal(daemon.metrics, "demand-response", why, source="http")
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, why) from err
        try:
            conversation = coordinator().request_demand_response(call, source="http")
        except RequestRefusedError as err:
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, err.reason) from err
        await coordinator().flush()
        return Response.json({"conversation_id": conversation}, HTTPStatus.ACCEPTED)

    async def negotiations(_: Request) -> Response:
        c = coordinator()
        runs = [*c.finished, *c.negotiations.values()]
        return Response.json([
            {
                "conversation_id": r.negotiation.conversation_id,
                "state": r.negotiation.state.value,
                "reason": r.negotiation.reason,
                "target_w": r.target_w,
                "committed_w": round(r.committed_w, 1),
                "awarded": {z: o.level for z, o in r.awarded.items()},
                "refused": r.refused,
                "turns": r.negotiation.turns,
            }
            for r in runs
        ])  # fmt: skip

    server.route("GET", "/healthz", healthz)
    server.route("GET", "/metrics", metrics)
    server.route("GET", "/api/zones", zones)
    server.route("GET", "/api/zones/{zone}", zone)
    server.route("GET", "/api/devices", devices)
    server.route("GET", "/api/alerts", alerts)
    server.route("GET", "/api/agents", agents)
    server.route("GET", "/api/negotiations", negotiations)
    server.route("POST", "/api/reload", reload, write=True)
    server.route("POST", "/api/zones/{zone}/vote", vote, write=True)
    server.route("POST", "/api/alerts/{alert}/ack", acknowledge, write=True)
    server.route("POST", "/api/alerts/{alert}/clear", clear, write=True)
    server.route("POST", "/api/zones/{zone}/override", override, write=True)
    server.route("POST", "/api/zones/{zone}/learning/reset", reset_learning, write=True)
    server.route("POST", "/api/demand-response", demand_response, write=True)

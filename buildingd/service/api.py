"""Routes of the HTTP endpoint over a running daemon: health, Prometheus metrics, the read-only
JSON API (zones, devices, alerts) and the token-protected writes, as a table of small handlers
(``ROUTES``), each taking the daemon and the request."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from buildingd.agents.messages import DemandResponseCall
from buildingd.agents.requests import record_refusal, request_error
from buildingd.errors import RequestRefusedError
from buildingd.service.gateway import gateways_json
from buildingd.service.http import HttpError, HttpServer, Request, Response
from buildingd.service.prometheus import metrics_text

if TYPE_CHECKING:
    from buildingd.coordinator.agent import CoordinatorAgent
    from buildingd.service.app import Daemon


def zone_json(daemon: Daemon, zone_id: str) -> dict[str, Any]:
    """One zone in the API: its site entry and the zone's summary (``agents.zone_summary``),
    with what the API adds (coasting, what it learned)."""
    zone = daemon.site.zones[zone_id]
    entry: dict[str, Any] = {"id": zone_id, "name": zone.name, "floor": zone.floor}
    entry["policy"] = daemon.site.zone_policy.get(zone_id)
    gmap = daemon.site.gateways
    if not gmap.single:  # a site over gateways: where it runs (its state is there only)
        entry["gateway"] = gmap.zone_gateway.get(zone_id)
        if entry["gateway"] != daemon.election.gateway_id:
            entry["mode"] = "elsewhere"
            return entry
    agent = daemon.zone_agents.get(zone_id)
    summary = agent.summary() if agent is not None else None
    if agent is None or summary is None or agent.decision is None:
        entry["mode"] = "starting"
        return entry
    entry.update(summary.model_dump(exclude={"zone_id"}))
    entry.update(coasting=agent.decision.coasting, learned=agent.learning_summary())
    entry["commitments"] = sorted(agent.commitments)  # demand-response conversations in force
    return entry


def zones_json(daemon: Daemon) -> list[dict[str, Any]]:
    return [zone_json(daemon, zone_id) for zone_id in daemon.site.zones]


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
        if not daemon.site.gateways.single:
            out[-1]["gateway"] = daemon.site.gateways.device_gateway.get(device_id)
    return out


Handler = Callable[["Daemon", Request], Awaitable[Response]]


def coordinator(daemon: Daemon) -> CoordinatorAgent:
    if daemon.coordinator is None:
        raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the coordinator is not running")
    return daemon.coordinator


def body_object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    return body


def known_zone(daemon: Daemon, request: Request) -> str:
    zone_id = request.params["zone"]
    if zone_id not in daemon.site.zones:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {zone_id!r}")
    return zone_id


def who(request: Request) -> str:
    return str(body_object(request).get("by", "technician"))[:100]


def answer(result_ok: bool, body: Any) -> Response:
    """200 with ``body`` when the daemon accepted the request, 422 with it when it refused."""
    return Response.json(body, 200 if result_ok else HTTPStatus.UNPROCESSABLE_ENTITY)


async def healthz(daemon: Daemon, _: Request) -> Response:
    ready = daemon.ready.is_set() and not daemon.stop_requested.is_set()
    body: dict[str, object] = {"live": True, "ready": ready, "status": daemon.status_summary()}
    if not daemon.site.gateways.single:
        body |= {"gateway": daemon.election.gateway_id, "leader": daemon.election.leader()}
    return Response.json(body, 200 if ready else HTTPStatus.SERVICE_UNAVAILABLE)


async def metrics(daemon: Daemon, _: Request) -> Response:
    return Response.text(metrics_text(daemon))


async def zones(daemon: Daemon, _: Request) -> Response:
    return Response.json(zones_json(daemon))


async def zone(daemon: Daemon, request: Request) -> Response:
    return Response.json(zone_json(daemon, known_zone(daemon, request)))


async def devices(daemon: Daemon, _: Request) -> Response:
    return Response.json(devices_json(daemon))


async def alerts(daemon: Daemon, _: Request) -> Response:
    return Response.json(daemon.open_alerts())


async def agents(daemon: Daemon, _: Request) -> Response:
    sup = daemon.supervisor
    children = list(sup.children.values()) if sup is not None else []
    return Response.json([
        {
            "name": c.name,
            "state": c.state.value,
            "restarts": c.restarts,
            "started_s": round(c.started_s, 3),
            "last_error": c.last_error,
        }
        for c in children
    ])  # fmt: skip


async def negotiations(daemon: Daemon, _: Request) -> Response:
    c = coordinator(daemon)
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


async def coordinator_state(daemon: Daemon, _: Request) -> Response:
    """What the coordinator keeps in memory: each zone's vote offset and each air-handler
    reset's setpoint (carried over to a standby on a site over gateways)."""
    c = coordinator(daemon)
    resets = [{"air_handler": r.ahu_id, "kind": r.signal.kind.value, "setpoint": r.loop.setpoint}
              for r in c.air.resets]  # fmt: skip
    votes = {z: c.votes.offset(z) for z in c.votes.zones()}
    return Response.json({"votes_offset_k": votes, "resets": resets})


async def gateways(daemon: Daemon, _: Request) -> Response:
    """The gateways of the site, who leads, and who owns which zones and devices."""
    nats = daemon.nats
    cut_off = nats is not None and nats.partition is not None and nats.partition.cut_off
    return Response.json(gateways_json(daemon.site, daemon.election, cut_off))


async def reload(daemon: Daemon, _: Request) -> Response:
    result = await daemon.reload()
    return answer(bool(result["ok"]), result)


async def vote(daemon: Daemon, request: Request) -> Response:
    """An occupant's "too hot" / "too cold" vote: ``{"vote": "hot"}``."""
    zone_id = known_zone(daemon, request)
    result = coordinator(daemon).vote(zone_id, str(body_object(request).get("vote")), "http")
    body = {"accepted": result.accepted, "reason": result.reason, "offset_k": result.offset_k}
    return answer(result.accepted, body)


async def override(daemon: Daemon, request: Request) -> Response:
    """A setpoint set by hand: ``{"heating_sp_c": 22.0}`` or ``{"cooling_sp_c": 23.5}``."""
    body = body_object(request)
    keys = [k for k in ("heating_sp_c", "cooling_sp_c") if k in body]
    if len(keys) != 1 or not isinstance(body[keys[0]], int | float):
        raise HttpError(HTTPStatus.BAD_REQUEST, "give one of heating_sp_c or cooling_sp_c")
    zone_id = known_zone(daemon, request)
    what = keys[0].removesuffix("_c")
    result = coordinator(daemon).override(zone_id, what, float(body[keys[0]]), "http")
    await coordinator(daemon).flush()
    return answer(bool(result["accepted"]), result)


async def reset_learning(daemon: Daemon, request: Request) -> Response:
    """Forget a zone's learned response and occupancy (a refurbished or repurposed room)."""
    agent = daemon.zone_agents.get(request.params["zone"])
    if agent is None:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no zone {request.params['zone']!r}")
    agent.reset_learning()
    return Response.json({"reset": True, "zone": agent.zone_id})


async def acknowledge(daemon: Daemon, request: Request) -> Response:
    """Stops an alert's reminders; it stays open until its cause goes away or is cleared."""
    by = who(request)
    if not coordinator(daemon).acknowledge(request.params["alert"], by):
        raise HttpError(HTTPStatus.NOT_FOUND, f"no open escalation {request.params['alert']!r}")
    await coordinator(daemon).flush()  # the retained alert and the webhooks say who, now
    return Response.json({"acknowledged": request.params["alert"], "by": by})


async def clear(daemon: Daemon, request: Request) -> Response:
    """Closes an alert by hand (a failed agent after a repair, a negotiation that fell short);
    a condition that persists raises a new one after its threshold."""
    by = who(request)
    if not coordinator(daemon).clear_alert(request.params["alert"], by):
        raise HttpError(HTTPStatus.NOT_FOUND, f"no open escalation {request.params['alert']!r}")
    await coordinator(daemon).flush()
    return Response.json({"cleared": request.params["alert"], "by": by})


MAX_KEY_CHARS = 255  # an Idempotency-Key's length


def idempotent_conversation(request: Request) -> str | None:
    """The conversation named by the request's ``Idempotency-Key`` header (IETF draft "The
    Idempotency-Key HTTP Header Field", draft-ietf-httpapi-idempotency-key-header: a
    structured-field string, quoted; a bare key is taken too), None without one. A digest of
    the key: the same key is the same conversation on whichever gateway leads."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise HttpError(HTTPStatus.BAD_REQUEST, "Idempotency-Key must be 1 to "
                        f"{MAX_KEY_CHARS} printable ASCII characters")  # fmt: skip
    return "http-" + hashlib.sha256(key.encode()).hexdigest()[:32]


async def demand_response(daemon: Daemon, request: Request) -> Response:
    """Open a demand-response event: ``{"target_w": 2000, "window_s": 3600}``. With an
    ``Idempotency-Key``, the same request again (a retry after a 503 or a timeout) is answered
    as the first was, with the event it opened; the key on a different request is refused."""
    conversation_id = idempotent_conversation(request)
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
        conversation = coordinator(daemon).request_demand_response(call, "http", conversation_id)
    except RequestRefusedError as err:
        raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, err.reason) from err
    # Accepted once the event is where a new leader would find it (the site's KV bucket).
    if not await coordinator(daemon).flush():
        raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "this gateway lost the coordinator "
                        "lease before the event was stored: send it again")  # fmt: skip
    return Response.json({"conversation_id": conversation}, HTTPStatus.ACCEPTED)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    write: bool = False  # needs the bearer token


ROUTES: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", healthz),
    Endpoint("GET", "/metrics", metrics),
    Endpoint("GET", "/api/zones", zones),
    Endpoint("GET", "/api/zones/{zone}", zone),
    Endpoint("GET", "/api/devices", devices),
    Endpoint("GET", "/api/alerts", alerts),
    Endpoint("GET", "/api/agents", agents),
    Endpoint("GET", "/api/negotiations", negotiations),
    Endpoint("GET", "/api/coordinator", coordinator_state),
    Endpoint("GET", "/api/gateways", gateways),
    Endpoint("POST", "/api/reload", reload, write=True),
    Endpoint("POST", "/api/zones/{zone}/vote", vote, write=True),
    Endpoint("POST", "/api/alerts/{alert}/ack", acknowledge, write=True),
    Endpoint("POST", "/api/alerts/{alert}/clear", clear, write=True),
    Endpoint("POST", "/api/zones/{zone}/override", override, write=True),
    Endpoint("POST", "/api/zones/{zone}/learning/reset", reset_learning, write=True),
    Endpoint("POST", "/api/demand-response", demand_response, write=True),
)


def install_routes(server: HttpServer, daemon: Daemon) -> None:
    for endpoint in ROUTES:
        handler = functools.partial(endpoint.handler, daemon)
        server.route(endpoint.method, endpoint.path, handler, write=endpoint.write)

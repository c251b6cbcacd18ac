"""Names on the NATS side of one site, pure: agent subjects, the site's command stream and its
per-gateway consumers, and the permissions a gateway's NATS user needs (nothing outside its site).

Subjects on core NATS: ``buildingd.<site>.at.<gateway>.<address>`` (an inform to an agent whose
gateway the sender knows: each gateway subscribes to its own, one wildcard) and
``buildingd.<site>.agent.<address>`` (a topic, or an agent of no known gateway: a gateway
subscribes to each address its own agents listen to, so the server drops what nobody there
wants). In the site's stream: ``buildingd.<site>.cmd.<gateway>.<address>`` (kept until the
gateway that hosts the receiver takes and acknowledges it; ``...cmd.<gateway>._batch`` carries
several).
An address token is the agent address with ``%``, ``.``, ``*``, ``>``, whitespace and
non-ASCII percent-encoded (NATS splits on ``.`` and reads ``*`` and ``>`` as wildcards).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

ROOT = "buildingd"
SAFE = "[]/:@!$&'()+,;=-_"  # kept as is; quote() always keeps letters, digits and "_.-~"
STREAM_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


def address_token(address: str) -> str:
    return quote(address, safe=SAFE).replace(".", "%2E")


def token_address(token: str) -> str:
    return unquote(token)


def site_token(site_id: str) -> str:
    return address_token(site_id)


def site_root(site_id: str) -> str:
    """Every subject of the site starts with this (``buildingd.<site>``)."""
    return f"{ROOT}.{site_token(site_id)}"


def agent_subject(site_id: str, address: str) -> str:
    return f"{site_root(site_id)}.agent.{address_token(address)}"


def gateway_agent_subject(site_id: str, gateway_id: str, address: str) -> str:
    return f"{site_root(site_id)}.at.{address_token(gateway_id)}.{address_token(address)}"


def gateway_agents(site_id: str, gateway_id: str) -> str:
    """What one gateway subscribes to for the informs other gateways address to its agents."""
    return f"{site_root(site_id)}.at.{address_token(gateway_id)}.>"


def command_subject(site_id: str, gateway_id: str, address: str) -> str:
    return f"{site_root(site_id)}.cmd.{address_token(gateway_id)}.{address_token(address)}"


# The last token of a batch of commands for one gateway's agents (``nats.bus``). Agent
# addresses and topics start with a letter: this token is nobody's.
BATCH_TOKEN = "_batch"


def batch_subject(site_id: str, gateway_id: str) -> str:
    return f"{site_root(site_id)}.cmd.{address_token(gateway_id)}.{BATCH_TOKEN}"


def gateway_commands(site_id: str, gateway_id: str) -> str:
    """The filter of a gateway's consumer: the commands for the agents it hosts."""
    return f"{site_root(site_id)}.cmd.{address_token(gateway_id)}.>"


# Commands for the coordinator wherever it runs: one site-wide consumer, pulled only by the
# gateway holding the lease, so what was sent while a leader died reaches the next one. Gateway
# ids start with a letter or digit: this token is nobody's.
COORDINATOR_QUEUE = "_coordinator"
COORDINATOR_CONSUMER = "coordinator"


def stream_name(site_id: str) -> str:
    """The site's command stream (stream names allow no ``.``, ``*``, ``>`` or ``/``)."""
    return "BUILDINGD_" + STREAM_NAME_BAD.sub("_", site_id) + "_CMD"


def consumer_name(gateway_id: str) -> str:
    return "gw_" + STREAM_NAME_BAD.sub("_", gateway_id)


# What opening a bucket and reading a key ask of the JetStream API.
KV_OPS = ("STREAM.INFO", "STREAM.CREATE", "STREAM.MSG.GET")


def lease_bucket(site_id: str) -> str:
    """The KV bucket of the site's coordinator lease (bucket names allow ``[A-Za-z0-9_-]``)."""
    return "buildingd_" + STREAM_NAME_BAD.sub("_", site_id) + "_lease"


def state_bucket(site_id: str) -> str:
    """The KV bucket of the coordinator's state (commitments, alerts) for a standby."""
    return "buildingd_" + STREAM_NAME_BAD.sub("_", site_id) + "_state"


def gateway_permissions(site_id: str, gateway_id: str) -> dict[str, Any]:
    """The ``permissions`` block of a gateway's NATS user (nats-server configuration): the
    site's subjects, the site's stream, and of its consumers only the gateway's own and the
    coordinator's (create each with its own filter, pull from it, acknowledge; only a lease
    holder pulls the coordinator's), the site's lease and state buckets, plus reply
    inboxes. Another site's
    subjects, another gateway's commands, and (to subscribe) another gateway's informs are
    refused by the server."""
    stream = stream_name(site_id)
    api = "$JS.API"
    buckets = lease_bucket(site_id), state_bucket(site_id)
    consumers = [  # (consumer, the filter it must have)
        (consumer_name(gateway_id), gateway_commands(site_id, gateway_id)),
        (COORDINATOR_CONSUMER, gateway_commands(site_id, COORDINATOR_QUEUE)),
    ]
    return {
        "publish": {
            "allow": [
                f"{site_root(site_id)}.>",
                f"{api}.INFO",
                f"{api}.STREAM.INFO.{stream}",
                f"{api}.STREAM.CREATE.{stream}",
                f"{api}.STREAM.UPDATE.{stream}",
                *(
                    rule
                    for consumer, own in consumers
                    for rule in (
                        f"{api}.CONSUMER.INFO.{stream}.{consumer}",
                        f"{api}.CONSUMER.CREATE.{stream}.{consumer}",
                        f"{api}.CONSUMER.CREATE.{stream}.{consumer}.{own}",
                        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
                        f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                        f"$JS.ACK.{stream}.{consumer}.>",
                    )
                ),
                # the coordinator's lease and state buckets (nats/lease.py, state_mirror.py)
                *(f"$KV.{b}.>" for b in buckets),
                *(f"{api}.{op}.KV_{b}" for b in buckets for op in KV_OPS),
                *(f"{api}.DIRECT.GET.KV_{b}.>" for b in buckets),
            ]
        },
        # Core NATS: the site's topics, what other gateways address to this one's agents and
        # to the coordinator's queue (a candidate's), replies; not another gateway's informs,
        # nor the commands published into the stream for another gateway.
        "subscribe": {
            "allow": [
                f"{site_root(site_id)}.agent.>",
                gateway_agents(site_id, gateway_id),
                gateway_agents(site_id, COORDINATOR_QUEUE),
                "_INBOX.>",
            ]
        },
    }

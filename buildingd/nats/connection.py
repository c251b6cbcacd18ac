"""The gateway's connection to the site's NATS cluster: every server listed (the client fails
over between them), reconnecting for ever with nats-py's own backoff, errors from the server
(a permissions violation above all) logged once per kind and counted in metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from buildingd.errors import BuildingdError
from buildingd.metrics import Metrics
from buildingd.settings import NatsSettings, read_secret

if TYPE_CHECKING:
    import nats.aio.client

log = logging.getLogger(__name__)
ERRORS_METRIC = "buildingd_nats_errors_total"


class NatsUnavailableError(BuildingdError):
    """No server of the cluster took the connection."""


class NatsErrors:
    """Errors the client reports asynchronously, by kind (the exception's class name)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.by_kind: dict[str, int] = {}
        self.last: str | None = None

    async def handle(self, err: Exception) -> None:
        kind = type(err).__name__
        if "permissions violation" in str(err).lower():
            kind = "permissions"
        first = kind not in self.by_kind
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.last = str(err)
        if self.metrics is not None:
            self.metrics.inc(ERRORS_METRIC, kind=kind)
        if first:
            log.warning("nats: %s (%s); further ones are only counted", err, kind)


PING_INTERVAL_S = 1
MAX_OUTSTANDING_PINGS = 2


async def connect(settings: NatsSettings, name: str, errors: NatsErrors) -> nats.aio.client.Client:
    """A connection named ``name`` (seen in the servers' monitoring). Raises
    ``NatsUnavailableError`` when no server answers at the start; later outages are
    reconnected in the background (publishes then wait or fail: the bus decides)."""
    import nats
    import nats.errors

    password = read_secret(settings.password, settings.password_file)
    try:
        return await nats.connect(
            servers=settings.servers,
            name=name,
            user=settings.user,
            password=password,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            # A node that stops answering without closing the connection (frozen, or a link
            # that drops packets) is left after PING_INTERVAL_S x (MAX_OUTSTANDING_PINGS + 1),
            # well inside a lease TTL; nats-py's default (120 s x 2) would hold the gateway on
            # it for minutes.
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            error_cb=errors.handle,
            no_echo=True,  # the bus delivers its own messages in process, never from NATS
        )
    except (OSError, nats.errors.Error) as err:
        where = ", ".join(settings.servers)
        raise NatsUnavailableError(f"no NATS server of {where} took the connection: {err}") from err

"""sd_notify(3) written in the project: READY, STATUS, WATCHDOG, RELOADING, STOPPING datagrams
to ``$NOTIFY_SOCKET``, and a watchdog guard that pings only while every registered component
(control loop, pollers) is alive. No-ops when not started by systemd; no I/O at construction."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Sends never block the event loop. If the manager's queue is full (net.unix.max_dgram_qlen,
# 10 by default, while PID 1 is busy), a WATCHDOG ping is dropped (the next tick sends another)
# and any other message waits in a short backlog, sent in order before the next message.
BACKLOG_MAX = 16


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address for a ``NOTIFY_SOCKET`` value: a path, or an abstract name for a
    leading ``@`` (sd_notify(3)). ``None`` when unset, empty or of a kind not supported here
    (``vsock:`` addresses, systemd 253+)."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no trailing NUL.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is not a path or abstract socket; notifications disabled", value)
    return None


def watchdog_interval_s(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``WATCHDOG_USEC`` as sd_watchdog_enabled(3)
    recommends, or ``None`` when the watchdog is off or meant for another process
    (``WATCHDOG_PID`` set to a different pid)."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog pings disabled", raw)
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        own_pid = os.getpid() if pid is None else pid
        try:
            if int(watchdog_pid) != own_pid:
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class Notifier:
    """Sends notifications to the service manager. Every method returns ``True`` when a datagram
    was sent and ``False`` when notifications are off or sending failed (logged, never raised:
    the building must keep running even if the manager's socket misbehaves)."""

    def __init__(
        self,
        notify_socket: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        usec_clock: Callable[[], int] = monotonic_usec,
    ) -> None:
        env = os.environ if environ is None else environ
        value = notify_socket if notify_socket is not None else env.get("NOTIFY_SOCKET")
        self._address = notify_address(value)
        self._environ = env
        self._usec_clock = usec_clock
        self._sock: socket.socket | None = None
        self._last_status: str | None = None
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_MAX)
        self.dropped = 0  # WATCHDOG pings dropped because the manager's queue was full

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram, newline-separated."""
        return self._send(assignments, keep=True)

    def flush(self) -> bool:
        """Send what waits in the backlog (every other send does this first); ``True`` when
        nothing is left waiting."""
        if self._address is None:
            return True
        return self._send((), keep=True)

    def _send(self, assignments: tuple[str, ...], *, keep: bool) -> bool:
        if self._address is None:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"notification {item!r} must be one KEY=VALUE line")
        payload = "\n".join(assignments).encode() if assignments else None
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            while self._backlog:
                self._sock.sendto(self._backlog[0], self._address)
                self._backlog.popleft()
            if payload is not None:
                self._sock.sendto(payload, self._address)
        except BlockingIOError:
            if payload is not None and keep:
                if len(self._backlog) == self._backlog.maxlen:
                    log.warning("sd_notify backlog full; dropping %r", self._backlog[0])
                self._backlog.append(payload)
            elif payload is not None:
                self.dropped += 1
            return False
        except OSError as err:
            what = assignments[0].split("=", 1)[0] if assignments else "backlog"
            log.warning("sd_notify %s failed: %s", what, err)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) finished; with an optional STATUS= line."""
        if status is None:
            return self.notify("READY=1")
        self._last_status = _one_line(status)
        return self.notify("READY=1", f"STATUS={self._last_status}")

    def status(self, text: str) -> bool:
        """STATUS=: the one-line summary `systemctl status` shows. Repeats are not re-sent."""
        line = _one_line(text)
        if line == self._last_status:
            return False
        payload = f"STATUS={line}"
        sent = self.notify(payload)
        if sent or payload.encode() in self._backlog:
            self._last_status = line
        return sent

    def watchdog(self) -> bool:
        return self._send(("WATCHDOG=1",), keep=False)

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC time of the request (systemd.service(5),
        Type=notify-reload); send ``ready()`` when the reload is done."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._usec_clock()}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for more time for the current start, reload or stop step."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` for this process, or ``None`` when the watchdog is off."""
        return watchdog_interval_s(self._environ)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class StaleComponent:
    component: str
    age_s: float
    max_age_s: float


class WatchdogGuard:
    """Sends WATCHDOG=1 only while every registered component has called ``heartbeat`` within
    its allowed age. The pinging task runs on the daemon's event loop, so a wedged loop sends
    nothing at all; a stuck poller (loop fine, component silent) withholds pings too. Either
    way systemd's WatchdogSec= expires and the service is restarted.

    ``clock`` is a monotonic clock in seconds (injectable for tests); it must be real time, not
    a simulated clock, because systemd's deadline is real time."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.notifier = notifier
        self.interval_s = interval_s
        self._clock = clock
        self._max_age_s: dict[str, float] = {}
        self._last_beat: dict[str, float] = {}
        self._stale_reported: set[str] = set()
        self.pings_sent = 0
        self.pings_withheld = 0

    def register(self, component: str, max_age_s: float) -> None:
        """Watch ``component`` (e.g. ``control``, ``modbus[ahu1].poll``); it counts as alive from
        now and must then beat at least every ``max_age_s`` (choose more than its longest
        legitimate pause: poll interval plus timeouts and backoff)."""
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self._max_age_s[component] = max_age_s
        self._last_beat[component] = self._clock()

    def unregister(self, component: str) -> None:
        """Stop watching ``component`` (its agent was stopped on purpose)."""
        self._max_age_s.pop(component, None)
        self._last_beat.pop(component, None)
        self._stale_reported.discard(component)

    def heartbeat(self, component: str) -> None:
        if component not in self._max_age_s:
            raise KeyError(f"watchdog component {component!r} is not registered")
        self._last_beat[component] = self._clock()

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self._max_age_s)

    def stale(self) -> list[StaleComponent]:
        """Components whose last heartbeat is older than their allowed age."""
        now = self._clock()
        out = []
        for component, max_age_s in self._max_age_s.items():
            age_s = now - self._last_beat[component]
            if age_s > max_age_s:
                out.append(StaleComponent(component, age_s, max_age_s))
        return out

    def tick(self) -> bool:
        """One check: ping if everything is alive. Returns whether a ping was sent."""
        stale = self.stale()
        names = {s.component for s in stale}
        # Log once per change, not once per tick.
        for s in stale:
            if s.component not in self._stale_reported:
                log.error(
                    "watchdog: %s silent for %.1f s (allowed %.1f s); withholding pings",
                    s.component,
                    s.age_s,
                    s.max_age_s,
                )
        for component in self._stale_reported - names:
            if component in self._max_age_s:
                log.info("watchdog: %s alive again", component)
        self._stale_reported = names
        if stale:
            self.pings_withheld += 1
            return False
        sent = self.notifier.watchdog()
        if sent:
            self.pings_sent += 1
        return sent

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled (run it in the daemon's task group)."""
        while True:
            self.tick()
            await asyncio.sleep(self.interval_s)

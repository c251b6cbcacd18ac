"""Who sent a message on the bus between gateways: an HMAC-SHA256 seal over the canonical
envelope, with a per-site key, a timestamp and a per-sender counter (a replay window), so only
gateways holding the site's key can put messages on the bus, and a message cannot be played again
or moved to another receiver.

Wire form: ``{"origin", "counter", "ts", "envelope", "mac"}`` (``envelope``: one, or a list of
them for a batch); ``mac`` is the hex HMAC-SHA256 (RFC 2104) of the canonical JSON (sorted
keys, no spaces, ASCII) of ``[topic, origin, counter, ts, envelope]`` (``topic``: the NATS
subject). Pure apart from reading and creating the key file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from buildingd.errors import ConfigError, ConfigProblem

MAX_SKEW_S = 60.0  # a message's timestamp may differ this much from the receiver's clock
REPLAY_WINDOW = 4096  # counters below the highest seen minus this are refused as replays
MAX_ORIGINS = 1000  # senders remembered (each gateway process is one origin)
MIN_KEY_BYTES = 16


def load_or_create_key(path: Path) -> bytes:
    """The site's bus key from ``path`` (hex or raw text, at least 16 bytes); created (64 hex
    digits from ``secrets``, mode 0600) when missing: copy it to every gateway of the site."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError([ConfigProblem(str(path), None, "nats.bus_key_file", str(err))]) from err
    if len(key) < MIN_KEY_BYTES:
        why = f"the bus key must have at least {MIN_KEY_BYTES} bytes, has {len(key)}"
        raise ConfigError([ConfigProblem(str(path), None, "nats.bus_key_file", why)])
    return key


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical(
    topic: str, origin: str, counter: int, ts: float, envelope: Any, encoded: str | None = None
) -> bytes:
    """``encoded``: the envelope's ``canonical_json`` when the caller has it already (a JSON
    array is its elements' encodings joined by commas: the same bytes as encoding it whole)."""
    if encoded is None:
        encoded = canonical_json(envelope)
    head = canonical_json([topic, origin, counter, ts])
    return f"{head[:-1]},{encoded}]".encode()


def mac(
    key: bytes, topic: str, origin: str, counter: int, ts: float, envelope: Any,
    encoded: str | None = None,
) -> str:  # fmt: skip
    signed = canonical(topic, origin, counter, ts, envelope, encoded)
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


class BusSealer:
    """Seals this process's messages: one origin, a counter that only goes up."""

    def __init__(self, key: bytes, origin: str, clock: Callable[[], float] = time.time) -> None:
        self.key, self.origin, self.clock = key, origin, clock
        self.counter = 0

    def seal(self, topic: str, envelope: dict[str, Any] | list[dict[str, Any]]) -> bytes:
        """The wire form; the envelope is encoded once, for the seal and the body alike."""
        self.counter += 1
        ts = round(self.clock(), 3)
        encoded = canonical_json(envelope)
        seal = mac(self.key, topic, self.origin, self.counter, ts, envelope, encoded)
        head = canonical_json({"origin": self.origin, "counter": self.counter, "ts": ts,
                               "mac": seal})  # fmt: skip
        return f'{head[:-1]},"envelope":{encoded}}}'.encode()


class BusVerifier:
    """Checks a received message's seal, age and counter. ``problem`` returns why it is refused
    (``unauthenticated``, ``stale``, ``replayed``) or None; only a sealed message moves the
    counter window, so a forger cannot push a real sender's messages out of it."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self.key, self.clock = key, clock
        self._seen: dict[str, tuple[int, set[int], float]] = {}  # origin: highest, window, last

    def problem(
        self, topic: str, data: dict[str, Any], now: float | None = None
    ) -> tuple[str, str] | None:
        """``now``: the time to judge the timestamp against; default this gateway's clock (a
        message kept in a stream is judged against the time the stream stored it)."""
        origin, counter, ts = data.get("origin"), data.get("counter"), data.get("ts")
        seal = data.get("mac")
        if not (isinstance(origin, str) and 0 < len(origin) <= 64 and type(counter) is int
                and isinstance(ts, int | float) and isinstance(seal, str)):  # fmt: skip
            return "unauthenticated", "no seal (origin, counter, ts, mac)"
        expected = mac(self.key, topic, origin, counter, ts, data.get("envelope"))
        if not hmac.compare_digest(expected, seal):
            return "unauthenticated", f"wrong seal from origin {origin[:64]}"
        now = self.clock() if now is None else now
        if abs(now - ts) > MAX_SKEW_S:
            return "stale", f"timestamp {now - ts:+.0f} s from this gateway's clock"
        highest, window, _ = self._seen.get(origin, (0, set(), now))
        if counter <= highest - REPLAY_WINDOW or counter in window:
            return "replayed", f"counter {counter} of origin {origin} seen before"
        window.add(counter)
        highest = max(highest, counter)
        if len(window) > 2 * REPLAY_WINDOW:  # trimmed now and then: amortised O(1)
            window.difference_update({c for c in window if c <= highest - REPLAY_WINDOW})
        self._seen[origin] = (highest, window, now)
        self._forget(now)
        return None

    def forget(self, origin: str, counter: int) -> None:
        """A message checked and then handed back, not acted on (for whoever takes it next):
        its counter may come once more."""
        seen = self._seen.get(origin)
        if seen is not None:
            seen[1].discard(counter)

    def _forget(self, now: float) -> None:
        """Bound the origins kept: drop those silent past the skew (their messages are stale
        by now anyway), then the longest silent."""
        if len(self._seen) <= MAX_ORIGINS:
            return
        for origin, (_, _, last) in list(self._seen.items()):
            if now - last > 2 * MAX_SKEW_S:
                del self._seen[origin]
        while len(self._seen) > MAX_ORIGINS:
            del self._seen[min(self._seen, key=lambda o: self._seen[o][2])]

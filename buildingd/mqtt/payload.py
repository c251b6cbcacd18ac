"""Strict JSON for payloads from the broker (pure): what RFC 8259 accepts and nothing more.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` tokens and turns ``1e999`` into
infinity; none is JSON, and a NaN that reached a zone would poison its median. ``loads`` refuses
them with ``ValueError``, as it refuses text that is not JSON at all.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def loads(payload: bytes | str) -> Any:
    """Parse JSON; ``ValueError`` (``JSONDecodeError`` among them) for anything that is not
    strict, finite JSON, ``RecursionError`` never escapes (reported as ``ValueError``)."""
    try:
        return json.loads(payload, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None

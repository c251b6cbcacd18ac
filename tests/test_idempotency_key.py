"""Demand-response requests over HTTP with an ``Idempotency-Key`` (IETF draft "The
Idempotency-Key HTTP Header Field"), against a real ``buildingd run``: a client that got a 503
or a timeout just as its request landed sends it again with the same key and gets the event it
opened, also after the daemon restarted; the key on a different request is refused (422)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import Running, start_daemon

pytestmark = pytest.mark.slow

ASK = {"target_w": 500, "window_s": 600, "reason": "grid operator"}


@pytest.fixture
def daemon(site_copy: Path, tmp_path: Path) -> Iterator[Running]:
    running = start_daemon(site_copy, tmp_path)
    try:
        yield running
    finally:
        running.close()


def request(daemon: Running, key: str | None, body: dict[str, Any] = ASK) -> tuple[int, Any]:
    headers = {} if key is None else {"Idempotency-Key": key}
    return daemon.post("/api/demand-response", daemon.token, json.dumps(body).encode(), headers)


def events(daemon: Running) -> list[str]:
    return [r["conversation_id"] for r in daemon.json("/api/negotiations")]


def test_the_same_key_opens_one_event_and_a_different_request_under_it_is_refused(
    daemon: Running, site_copy: Path, tmp_path: Path
) -> None:
    daemon.wait_ready()
    code, first = request(daemon, '"retry-1"')  # a structured-field string, as the draft has it
    assert code == 202
    conversation = first["conversation_id"]
    assert request(daemon, '"retry-1"') == (202, first)  # the retry: the same event
    assert request(daemon, "retry-1") == (202, first)  # the key unquoted is the same key
    assert events(daemon).count(conversation) == 1 and len(events(daemon)) == 1
    code, body = request(daemon, '"retry-1"', {**ASK, "target_w": 900})
    assert code == 422 and "different request" in json.dumps(body), body
    assert daemon.metric("buildingd_requests_refused_total", source="http") >= 1
    assert len(events(daemon)) == 1  # nothing opened by the refused one
    assert request(daemon, "x" * 256)[0] == 400
    code, other = request(daemon, '"retry-2"')  # another key: another event
    assert code == 202 and other["conversation_id"] != conversation
    assert len(events(daemon)) == 2
    # Kept in the state: after a restart the retry is still the event it opened.
    daemon.stop()
    again = start_daemon(site_copy, tmp_path, state=daemon.state)
    try:
        again.wait_ready()
        assert request(again, '"retry-1"') == (202, first)
        assert request(again, '"retry-1"', {**ASK, "window_s": 900})[0] == 422
        assert set(events(again)) <= {conversation, other["conversation_id"]}  # none new
        assert request(again, None)[0] == 202  # no key: a new event each time, as before
    finally:
        again.close()

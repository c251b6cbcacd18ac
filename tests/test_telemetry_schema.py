"""The telemetry schema: what the writer produces, what the README documents, and what the Grafana
dashboard queries all agree."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import yaml

from buildingd.telemetry import schema
from tests.conftest import REPO

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DASHBOARD = REPO / "grafana" / "dashboards" / "buildingd.json"


def full_lines() -> dict[str, str]:
    """One line per measurement with every optional tag and field present."""
    health = dict.fromkeys(schema.SCHEMA["daemon"][1], 1.0)
    return {
        "reading": schema.reading_line(
            "s", "d", "p", "z", "temperature", "degC", 21.0, "good", NOW
        ),
        "command": schema.command_line(
            "s", "d", "p", "z", "heating_setpoint", 21.0, False, "comfort", "timeout", NOW
        ),
        "zone_state": schema.zone_state_line(
            "s",
            "z",
            "occupied",
            21.0,
            40.0,
            True,
            21.0,
            24.0,
            21.0,
            24.0,
            50.0,
            1.0,
            2.0,
            3.0,
            NOW,
        ),  # fmt: skip
        "zone_learning": schema.zone_learning_line(
            "s", "z", dict.fromkeys(schema.SCHEMA["zone_learning"][1], 1.0), NOW
        ),
        "event": schema.event_line("s", "alert", "warning", "zone[z]", "z", "text", NOW),
        "negotiation": schema.negotiation_line(
            "s",
            "demand-response",
            "executing",
            "c1",
            "why",
            dict.fromkeys(schema.SCHEMA["negotiation"][1][2:], 1.0),
            NOW,
        ),  # fmt: skip
        "daemon": schema.daemon_line("s", health, NOW, gateway="g1"),
    }


def parse_line(text: str) -> tuple[str, set[str], set[str]]:
    head, fields, _ts = re.split(r"(?<!\\) ", text)
    measurement, *tags = re.split(r"(?<!\\),", head)
    field_keys = {f.split("=", 1)[0] for f in re.split(r",(?=\w+=)", fields)}
    return measurement, {t.split("=", 1)[0] for t in tags}, field_keys


def test_the_writer_produces_exactly_the_documented_schema() -> None:
    lines = full_lines()
    assert set(lines) == set(schema.SCHEMA)
    for name, text in lines.items():
        measurement, tags, fields = parse_line(text)
        assert measurement == name
        assert tags == set(schema.SCHEMA[name][0]), name
        assert fields == set(schema.SCHEMA[name][1]), name
        assert text.endswith(f" {int(NOW.timestamp())}")  # seconds precision


def test_line_protocol_escapes_tag_values_and_strings() -> None:
    text = schema.event_line("a b", "k,x", "info", "s=1", None, 'say "hi"\nnow', NOW)
    assert text.startswith(r"event,kind=k\,x,severity=info,site=a\ b,source=s\=1 ")
    assert r'message="say \"hi\"\nnow"' in text


def test_the_readme_documents_every_measurement_tag_and_field() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Telemetry schema", 1)[1].split("\n## ", 1)[0]
    for measurement, (tags, fields) in schema.SCHEMA.items():
        row = next((r for r in section.splitlines() if r.startswith(f"| `{measurement}`")), None)
        assert row is not None, f"README has no row for {measurement}"
        for name in (*tags, *fields):
            assert f"`{name}`" in row, f"README row {measurement} lacks {name}"


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    queries = [t["query"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [a["query"] for a in dash["annotations"]["list"]]
    queries += [v["query"] for v in dash["templating"]["list"]]
    return queries


def test_every_dashboard_query_uses_only_what_the_writer_produces() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    used: set[str] = set()
    for query in queries:
        measurements = set(re.findall(r'FROM "(\w+)"', query))
        assert measurements, query
        assert measurements <= set(schema.SCHEMA), query
        known = set(measurements)
        for m in measurements:
            known |= set(schema.SCHEMA[m][0]) | set(schema.SCHEMA[m][1])
        aliases = set(re.findall(r'AS "(\w+)"', query))
        identifiers = set(re.findall(r'"(\w+)"', query)) - aliases
        unknown = identifiers - known
        assert not unknown, f"{query}\n uses {unknown}, not in the schema of {measurements}"
        used |= identifiers - measurements
        used |= measurements
    # The dashboard shows every measurement the writer produces.
    assert set(schema.SCHEMA) <= used


def test_the_health_panels_show_each_gateway_apart() -> None:
    """On a site over gateways every gateway writes its own ``daemon`` line (tagged
    ``gateway``): a panel taking ``last()`` over all of them showed whichever wrote last."""
    dash = json.loads(DASHBOARD.read_text())
    targets = [t for p in dash["panels"] for t in p.get("targets", [])
               if 'FROM "daemon"' in t["query"]]  # fmt: skip
    assert len(targets) >= 8
    for target in targets:
        assert re.search(r'GROUP BY (time\(\$__interval\), )?"gateway"', target["query"]), target
        assert "$tag_gateway" in target["alias"], target


def test_dashboard_panels_use_the_provisioned_data_source() -> None:
    source = yaml.safe_load((REPO / "grafana/provisioning/datasources/buildingd.yaml").read_text())[
        "datasources"
    ][0]
    assert source["jsonData"]["version"] == "InfluxQL"
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("temperature", "humidity", "occupancy", "light", "setpoint", "power", "alert"):
        assert topic in titles, topic

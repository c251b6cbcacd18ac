"""`buildingd evaluate`: buildingd against the common-practice baseline on simulated time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildingd.config.loader import load_site
from buildingd.evaluate import evaluate, plot
from buildingd.service.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_one_working_day_against_the_baseline(tmp_path: Path) -> None:
    site = load_site(REPO)
    result = evaluate(site, days=1.0, seed=3, scenario="heating", workdir=tmp_path)
    ours, base = result["buildingd"], result["baseline"]
    for kpis in (ours, base):
        assert {"tdis_tot", "ener_tot", "ppeak_tot", "ener_light"} <= set(kpis)
        assert kpis["ener_tot"] > 0
    # Occupancy and daylight control must use clearly less light than lights-on-all-day.
    assert ours["ener_light"] < 0.8 * base["ener_light"]
    assert result["savings_pct"]["ener_light"] > 20
    # The same weather and occupancy: the baseline's trajectory file has the same shape.
    assert result["messages_per_zone_hour"]["buildingd"] > 0
    made = plot(result, tmp_path / "plots", "f1-open-office", day=0)
    assert [p.name for p in made] == ["temperature-f1-open-office.png", "power.png", "light.png"]
    assert all(p.stat().st_size > 5000 for p in made)


def test_evaluate_command_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    rc = main(["evaluate", "--days", "0.25", "--seed", "2", "--json", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["days"] == 0.25 and printed["scenario"] == "heating"


def test_a_demand_response_day_settles_and_sheds(tmp_path: Path) -> None:
    site = load_site(REPO)
    result = evaluate(site, days=1.0, seed=4, scenario="demand-response", workdir=tmp_path)
    assert result["negotiations"] == {"settled": 1}
    window = result["demand_response_window_kw"]
    assert window["buildingd"] < window["baseline"]

"""`buildingd evaluate`: buildingd against the common-practice baseline on simulated time.

A simulated hour costs a few CPU seconds per controller (the real agents run), so the tests share
evaluations where they can and use the shortest horizon that still shows what they check; the
two runs of an evaluation go side by side on two cores. Slow tests carry their own timeout.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from buildingd.config.loader import Site, load_site
from buildingd.evaluate import SCENARIOS, Progress, evaluate, plot
from buildingd.service.cli import main
from tests.conftest import REPO


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(REPO)


@pytest.fixture(scope="module")
def working_day(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Monday 00:00-18:00 of the heating week with the utility's call for 1.5 kW less at
    16:00-17:00, shared by the tests below: the night setback, the morning warm-up, eleven
    occupied hours (the schedule starts at 07:00, people from about 08:00) and the event."""
    workdir = tmp_path_factory.mktemp("working-day")
    return evaluate(site, days=0.75, seed=4, scenario="demand-response", workdir=workdir)


def column(trajectory: str, prefix: str) -> list[list[float]]:
    """Per row, the values of the columns starting with ``prefix``."""
    with Path(trajectory).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [[float(v) for k, v in r.items() if k.startswith(prefix)] for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_a_working_day_against_the_baseline(working_day: dict[str, Any]) -> None:
    result = working_day
    ours, base = result["buildingd"], result["baseline"]
    for kpis in (ours, base):
        assert {"tdis_tot", "ener_tot", "ppeak_tot", "ener_light", "hdis_tot"} <= set(kpis)
        assert kpis["ener_tot"] > 0
        assert kpis["hours"] == pytest.approx(17.92, abs=0.01)  # samples every 5 min
    # Occupancy and daylight control must use clearly less light than lights-on-all-day.
    assert ours["ener_light"] < 0.8 * base["ener_light"]
    assert result["savings_pct"]["ener_light"] > 20
    assert result["messages_per_zone_hour"]["buildingd"] > 0
    # Nothing failed; the only alert is the page that the zones could not shed all that the
    # utility asked for (the coordinator says so rather than pretend).
    assert result["alerts"]["baseline"] == []
    assert all(a.startswith("escalation: demand response") for a in result["alerts"]["buildingd"])
    # Humidity is the room's, never a made-up 0: winter air is dry, but not a vacuum.
    for name in ("buildingd", "baseline"):
        assert min(min(row) for row in column(result["trajectories"][name], "humidity_pct:")) > 5


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_a_demand_response_call_settles_and_sheds(working_day: dict[str, Any]) -> None:
    # The run goes on to 18:00: the negotiation is over once the zones have restored.
    assert working_day["negotiations"] == {"settled": 1}
    window = working_day["demand_response_window_kw"]
    assert window["buildingd"] < window["baseline"]


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_plots_of_a_representative_day(working_day: dict[str, Any], tmp_path: Path) -> None:
    made = plot(working_day, tmp_path / "plots", "f1-open-office")
    assert [p.name for p in made] == ["temperature-f1-open-office.png", "power.png", "light.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 5000 for p in made)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_a_cooling_morning_runs_and_reports_kpis(site: Site, tmp_path: Path) -> None:
    # Until 08:24 of a hot July Monday: the sun is up at 05:30 and the zones start at 24 °C,
    # so both controllers are cooling by the time people arrive.
    result = evaluate(site, days=0.35, seed=3, scenario="cooling", workdir=tmp_path)
    assert result["start"].startswith("2026-07-13T00:00")
    for name in ("buildingd", "baseline"):
        kpis = result[name]
        assert kpis["ener_tot"] > 0 and kpis["ppeak_tot"] > 0 and kpis["tdis_tot"] >= 0
        cooling = column(result["trajectories"][name], "power_w:cooling_")
        heating = column(result["trajectories"][name], "power_w:heating_")
        assert sum(map(sum, cooling)) > 0
        assert sum(map(sum, heating)) == 0  # nobody heats in July
        # Dehumidifiers are electric loads the controllers switch: they count in ener_tot.
        assert len(column(result["trajectories"][name], "power_w:dehumidifier_")[0]) == 8
    assert result["savings_pct"]["ener_tot"] is not None


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_a_dead_temperature_sensor_ends_in_safe_hold_and_is_reported(
    site: Site, tmp_path: Path
) -> None:
    # The meeting room's thermostat stops answering at 08:00; the run ends at 09:00.
    assert SCENARIOS["sensor-failure"].fault is not None
    result = evaluate(site, days=0.375, seed=3, scenario="sensor-failure", workdir=tmp_path)
    fault = result["fault"]
    assert fault["zone"] == "f1-meeting" and fault["point"] == "temperature"
    assert fault["failed_at"] == "2027-01-11T08:00:00+01:00"
    for name in ("buildingd", "baseline"):
        assert fault[name]["mode_at_end"] == "hold"
        assert 0.75 <= fault[name]["hold_h"] <= 1.0  # from shortly after 08:00 to the end
        assert "zone f1-meeting: temperature unavailable" in fault[name]["alerts"]
        assert "device f1-meeting-thermostat: device unavailable" in result["alerts"][name]
    # After 15 minutes down the coordinator pages someone, saying what state the zone is in.
    assert any(
        a.startswith("escalation: device f1-meeting-thermostat unavailable") and "hold" in a
        for a in result["alerts"]["buildingd"]
    )
    # The dead device takes the room's humidity reading with it; the trajectory still records
    # the room's humidity (no false "too dry" discomfort from a missing value read as 0 %RH).
    for name in ("buildingd", "baseline"):
        assert min(min(r) for r in column(result["trajectories"][name], "humidity_pct:")) > 5


def strip_paths(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "trajectories"}


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_the_same_seed_gives_the_same_result_and_another_seed_another(
    site: Site, tmp_path: Path
) -> None:
    # 43 minutes of a January night are enough for the weather of two seeds to part. One run
    # in this process, the others in worker processes: both ways compute the same thing.
    def run(seed: int, jobs: int, name: str) -> dict[str, Any]:
        return evaluate(site, 0.03, seed, "heating", tmp_path / name, jobs=jobs)

    first, again, other = run(5, 1, "first"), run(5, 2, "again"), run(6, 2, "other")
    assert strip_paths(first) == strip_paths(again)
    for name in ("buildingd", "baseline"):
        same = Path(first["trajectories"][name]).read_bytes()
        assert Path(again["trajectories"][name]).read_bytes() == same
        assert Path(other["trajectories"][name]).read_bytes() != same
    assert strip_paths(other) != strip_paths(first)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_evaluate_command_prints_json_writes_plots_and_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plots = tmp_path / "result.json", tmp_path / "plots"
    argv = ["evaluate", "--days", "0.1", "--seed", "2", "--json", str(out), "--plots", str(plots)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads(out.read_text())
    assert printed["days"] == 0.1 and printed["scenario"] == "heating"
    assert "trajectories" not in printed  # they were in a temporary folder, now gone
    names = ["temperature-f1-open-office.png", "power.png", "light.png"]
    assert [Path(p).name for p in printed["plots"]] == names
    assert all((plots / n).read_bytes().startswith(b"\x89PNG") for n in names)
    # stderr is not a terminal here: plain progress lines, one per 10 %, no carriage returns.
    progress = [line for line in captured.err.splitlines() if line.startswith("evaluate: ")]
    percents = [int(line.split()[1].rstrip("%")) for line in progress]
    assert len(percents) >= 2 and percents == sorted(set(percents))
    assert all(p % 10 == 0 for p in percents)
    assert progress[-1] == "evaluate: 100% (buildingd 100%, baseline 100%)"
    assert "\r" not in captured.err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_redrawn_in_place() -> None:
    out = Terminal()
    progress = Progress(out, ["buildingd", "baseline"])
    progress.update("buildingd", 0.5)
    progress.update("baseline", 0.25)
    progress.update("baseline", 0.2)  # never backwards
    assert "\n" not in out.getvalue()
    last = out.getvalue().split("\r")[-1]
    assert last == (
        "buildingd [##########..........]  50.0%  baseline [#####...............]  25.0%"
    )
    # A line a run logged goes above the bars, which are drawn again below it.
    progress.message("buildingd: device d1 unavailable")
    assert out.getvalue().endswith("\r\x1b[Kbuildingd: device d1 unavailable\n\r" + last)
    progress.finish()
    assert out.getvalue().endswith("\n")


def test_progress_in_a_log_is_a_line_per_tenth() -> None:
    out = io.StringIO()
    progress = Progress(out, ["buildingd", "baseline"])
    for step in range(1, 21):
        progress.update("buildingd", min(1.0, step / 10))
        progress.update("baseline", step / 20)
    lines = out.getvalue().splitlines()
    assert lines[0] == "evaluate: 10% (buildingd 20%, baseline 5%)"
    assert lines[-1] == "evaluate: 100% (buildingd 100%, baseline 100%)"
    assert len(lines) == 10

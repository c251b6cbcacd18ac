"""KPI calculator on trajectories whose integrals are known in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildingd.kpi import (
    Trajectory,
    TrajectoryError,
    compute_kpis,
    integrate,
    kpi_main,
    peak_window_mean,
    read_trajectory_csv,
)


def write_csv(path: Path, header: list[str], rows: list[list[float]]) -> Path:
    path.write_text(
        "\n".join([",".join(header)] + [",".join(repr(v) for v in row) for row in rows]) + "\n"
    )
    return path


def test_linear_ramp_below_the_band_gives_a_triangle(tmp_path: Path) -> None:
    # 18 °C rising to 22 °C over 4 h against a lower bound of 21 °C: the deviation falls linearly
    # from 3 K to 0 in 3 h (exactly at a sample), so the discomfort is 3 K * 3 h / 2 = 4.5 K·h.
    t = [i * 900.0 for i in range(17)]
    temp = [18.0 + 4.0 * ti / 14400 for ti in t]
    rows = [[ti, x, 21.0, 24.0, 1000.0] for ti, x in zip(t, temp, strict=True)]
    path = write_csv(
        tmp_path / "t.csv",
        ["time_s", "temperature_c:a", "lower_c:a", "upper_c:a", "power_w:hp"],
        rows,
    )
    kpis = compute_kpis(read_trajectory_csv(path), area_m2=10.0)
    assert kpis.tdis_tot == pytest.approx(4.5)
    # 1 kW for 4 h over 10 m² = 0.4 kWh/m²; constant power: peak 0.1 kW/m².
    assert kpis.ener_tot == pytest.approx(0.4)
    assert kpis.ppeak_tot == pytest.approx(0.1)
    assert kpis.ener_light == 0.0
    assert kpis.hdis_tot is None
    assert kpis.hours == pytest.approx(4.0)


def test_discomfort_is_averaged_over_zones_and_counts_both_bounds() -> None:
    t = [0.0, 3600.0, 7200.0]
    cols = {
        # zone a: 1 K too warm for 2 h = 2 K·h
        "temperature_c:a": [25.0, 25.0, 25.0],
        "lower_c:a": [21.0] * 3,
        "upper_c:a": [24.0] * 3,
        # zone b: inside the band = 0
        "temperature_c:b": [22.0, 22.0, 22.0],
        "lower_c:b": [21.0] * 3,
        "upper_c:b": [24.0] * 3,
        "humidity_pct:a": [70.0, 70.0, 70.0],
        "hum_lower_pct:a": [30.0] * 3,
        "hum_upper_pct:a": [60.0] * 3,
        "power_w:lighting_a": [500.0, 500.0, 0.0],
        "power_w:heating_a": [0.0, 0.0, 0.0],
    }
    kpis = compute_kpis(Trajectory(t, cols), area_m2=5.0)
    assert kpis.tdis_by_zone == {"a": pytest.approx(2.0), "b": 0.0}
    assert kpis.tdis_tot == pytest.approx(1.0)
    assert kpis.hdis_tot == pytest.approx(20.0)  # 10 %RH for 2 h, one zone with humidity
    # 500 W for 1 h then a ramp to 0 over 1 h: 0.75 kWh over 5 m².
    assert kpis.ener_light == pytest.approx(0.15)
    assert kpis.ener_tot == pytest.approx(0.15)


def test_peak_is_the_largest_fifteen_minute_mean_not_the_largest_sample() -> None:
    # 1 h at 1 kW with a 10 kW plateau from minute 20 to 25, sampled each minute, so the signal
    # ramps over one minute on each side: the second quarter hour holds 5 min at 10 kW, two
    # 1-minute ramps averaging 5.5 kW and 8 min at 1 kW, a mean of 69 / 15 = 4.6 kW.
    t = [60.0 * i for i in range(61)]
    power = [10000.0 if 20 <= i <= 25 else 1000.0 for i in range(61)]
    expected = (integrate(t[15:31], power[15:31])) / 900.0
    assert peak_window_mean(t, power) == pytest.approx(expected)
    assert peak_window_mean(t, power) < max(power)
    assert expected == pytest.approx((5 * 10000 + 2 * 5500 + 8 * 1000) / 15)


@given(
    level=st.floats(min_value=-50, max_value=50, allow_nan=False),
    hours=st.integers(min_value=1, max_value=48),
)
def test_a_constant_offset_integrates_exactly(level: float, hours: int) -> None:
    t = [3600.0 * i for i in range(hours + 1)]
    cols = {
        "temperature_c:z": [level] * len(t),
        "lower_c:z": [20.0] * len(t),
        "upper_c:z": [25.0] * len(t),
    }
    kpis = compute_kpis(Trajectory(t, cols), area_m2=1.0)
    deviation = max(20.0 - level, 0.0) + max(level - 25.0, 0.0)
    assert math.isclose(kpis.tdis_tot, deviation * hours, rel_tol=1e-9, abs_tol=1e-9)


def test_cli_prints_json_and_rejects_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_csv(
        tmp_path / "good.csv",
        ["time_s", "temperature_c:a", "lower_c:a", "upper_c:a", "power_w:x"],
        [[0.0, 20.0, 21.0, 24.0, 100.0], [3600.0, 20.0, 21.0, 24.0, 100.0]],
    )
    assert kpi_main([str(good), "--area-m2", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tdis_tot"] == pytest.approx(1.0)
    assert out["ener_tot"] == pytest.approx(0.05)
    assert {"tdis_tot", "ener_tot", "ppeak_tot", "ener_light", "hdis_tot"} <= set(out)

    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,temperature_c:a,lower_c:a,upper_c:a\n0,20,21,x\n")
    assert kpi_main([str(bad), "--area-m2", "2"]) == 2
    assert "bad.csv:2: upper_c:a: not a number" in capsys.readouterr().err

    missing = write_csv(tmp_path / "m.csv", ["time_s", "temperature_c:a"], [[0.0, 1.0]])
    with pytest.raises(TrajectoryError, match="missing column lower_c:a"):
        compute_kpis(read_trajectory_csv(missing), 1.0)


def test_a_missing_sample_is_left_out_not_counted_as_zero(tmp_path: Path) -> None:
    # Hourly samples, 70 %RH against an upper bound of 60; the humidity and the meter are
    # missing at 2 h (an empty cell and a nan). Only the intervals with both ends known count:
    # 0-1 h and 3-4 h, 10 %RH·h each. Read as 0 %RH, the gap would add 2 h of false "too dry"
    # discomfort (30 %RH below the lower bound of 30) and make the energy smaller.
    header = ["time_s", "temperature_c:a", "lower_c:a", "upper_c:a", "humidity_pct:a",
              "hum_lower_pct:a", "hum_upper_pct:a", "power_w:heating"]  # fmt: skip
    lines = [",".join(header)]
    for hour in range(5):
        rh = "" if hour == 2 else "70"
        power = "nan" if hour == 2 else "1000"
        lines.append(f"{3600 * hour},22,21,24,{rh},30,60,{power}")
    path = tmp_path / "gap.csv"
    path.write_text("\n".join(lines) + "\n")
    trajectory = read_trajectory_csv(path)
    assert math.isnan(trajectory.columns["humidity_pct:a"][2])
    kpis = compute_kpis(trajectory, area_m2=1.0)
    assert kpis.hdis_tot == pytest.approx(20.0)
    assert kpis.tdis_tot == 0.0
    assert kpis.ener_tot == pytest.approx(2.0)  # 1 kW over the 2 known hours
    assert kpis.ppeak_tot == pytest.approx(1.0)  # the mean where known, not diluted by the gap
    assert kpis.hours == pytest.approx(4.0)


def test_peak_over_a_window_with_a_gap_is_the_mean_of_what_is_known() -> None:
    t = [0.0, 300.0, 600.0, 900.0]
    assert peak_window_mean(t, [2000.0, 2000.0, math.nan, 2000.0]) == pytest.approx(2000.0)
    assert peak_window_mean([0.0], [math.nan]) == 0.0
    assert integrate(t, [math.nan] * 4) == 0.0

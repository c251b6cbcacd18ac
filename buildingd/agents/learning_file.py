"""A zone's learned state on disk (``<state_dir>/learning/<zone>.json``): its thermal response per
regime, its occupancy profile and its start correction. Owns the versioned file format; what is
learned is ``control.zone_learning``'s business. A file that cannot be read is set aside and the
zone starts learning afresh: learned state is never worth a zone not starting."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from buildingd.control.nightly_refit import KEEP_WINDOWS, WindowSample
from buildingd.control.occupancy_forecast import OccupancyProfile, SlotMean
from buildingd.control.thermal_response import Regime, RegimeModel, ZoneResponse
from buildingd.control.zone_learning import (
    KEEP_MORNING_RATES,
    JudgedStart,
    MorningRate,
    ZoneLearning,
)
from buildingd.errors import BuildingdError
from buildingd.statefile import set_aside, write_atomic

log = logging.getLogger(__name__)

DIR_NAME = "learning"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Model(_Frozen):
    estimate: tuple[float, float]
    covariance: tuple[float, float, float, float]
    samples: int = Field(ge=0)
    rejected: int = Field(ge=0)
    residual_var: float = Field(ge=0)


class _Slot(_Frozen):
    key: tuple[int | str, int]
    probability: float = Field(ge=0, le=1)
    days: int = Field(ge=0)


class LearningFile(_Frozen):
    version: Literal[1] = 1
    zone_id: str
    response: dict[Regime, _Model]
    by_weekday: list[_Slot]
    by_day_type: list[_Slot]
    start_bias_s: float = Field(ge=-3600, le=3600)
    starts: list[tuple[date, float]] = Field(default_factory=list, max_length=100)
    # Window slopes kept for the nightly refit (regime, K/h, zone degC, outdoor degC or null).
    windows: list[tuple[Regime, float, float, float | None]] = Field(
        default_factory=list, max_length=len(Regime) * KEEP_WINDOWS
    )
    refit_at: datetime | None = None
    # Judged mornings' mean rates (regime, K/h), the latest per regime.
    morning_rates: list[tuple[Regime, float]] = Field(
        default_factory=list, max_length=len(Regime) * KEEP_MORNING_RATES
    )


class LearningFileError(BuildingdError):
    """The file exists but is not a readable learning file."""


def path_for(state_dir: Path, zone_id: str) -> Path:
    return state_dir / DIR_NAME / f"{zone_id}.json"


def dump(zone_id: str, learning: ZoneLearning) -> str:
    data = LearningFile(
        zone_id=zone_id,
        response={
            regime: _Model(
                estimate=m.estimate,
                covariance=m.covariance,
                samples=m.samples,
                rejected=m.rejected,
                residual_var=m.residual_var,
            )
            for regime, m in learning.response.models.items()
        },
        by_weekday=[
            _Slot(key=k, probability=v.probability, days=v.days)
            for k, v in sorted(learning.occupancy.by_weekday.items())
        ],
        by_day_type=[
            _Slot(key=k, probability=v.probability, days=v.days)
            for k, v in sorted(learning.occupancy.by_day_type.items())
        ],
        start_bias_s=learning.start_bias_s,
        starts=[(s.day, s.error_s) for s in learning.starts],
        windows=[(w.regime, w.rate_k_per_h, w.zone_c, w.outdoor_c) for w in learning.windows],
        refit_at=learning.refit_at,
        morning_rates=[(r.regime, r.rate_k_per_h) for r in learning.morning_rates],
    )
    return json.dumps(data.model_dump(mode="json"), sort_keys=True) + "\n"


def parse(text: str) -> ZoneLearning:
    try:
        data = LearningFile.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise LearningFileError(f"{where}: {first['msg']}") from err
    return ZoneLearning(
        response=ZoneResponse(
            {
                regime: RegimeModel(
                    regime, m.estimate, m.covariance, m.samples, m.rejected, 0, m.residual_var
                )
                for regime, m in data.response.items()
            }
        ),
        occupancy=OccupancyProfile(
            by_weekday={
                (int(s.key[0]), s.key[1]): SlotMean(s.probability, s.days) for s in data.by_weekday
            },
            by_day_type={
                (str(s.key[0]), s.key[1]): SlotMean(s.probability, s.days) for s in data.by_day_type
            },
        ),
        start_bias_s=data.start_bias_s,
        starts=tuple(JudgedStart(day, error_s) for day, error_s in data.starts),
        windows=tuple(WindowSample(*w) for w in data.windows),
        refit_at=data.refit_at,
        morning_rates=tuple(MorningRate(*r) for r in data.morning_rates),
    )


def load(state_dir: Path, zone_id: str) -> ZoneLearning:
    """The zone's learned state, or a fresh one when there is none or it cannot be read (then
    the file is set aside as ``.corrupt-<time>`` and that is logged)."""
    path = path_for(state_dir, zone_id)
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ZoneLearning()
    except (OSError, UnicodeDecodeError, LearningFileError) as err:
        aside = set_aside(path)
        log.error(  # noqa: TRY400 - the cause is in the message; a traceback tells no more
            "zone %s: learned state %s unreadable (%s); set aside as %s, learning afresh",
            zone_id,
            path,
            err,
            aside,
        )
        return ZoneLearning()


# The one thread that writes learned state: writes (two fsyncs each, milliseconds on an SD card)
# leave the event loop, and go to disk one at a time in the order they were asked for, so a later
# state is never overwritten by an earlier one. Idle, it costs nothing; it is joined at exit.
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learning-save")


def save(state_dir: Path, zone_id: str, learning: ZoneLearning) -> None:
    """Write now and wait (at stop, after a reset): after the writes already asked for."""
    save_soon(state_dir, zone_id, learning).result()


def save_soon(state_dir: Path, zone_id: str, learning: ZoneLearning) -> Future[None]:
    """Encode now (on the caller's thread: a CPU-bound encoding in a thread would hold the GIL
    against the event loop) and write on the writer thread; the future says how it went."""
    return _WRITER.submit(write_atomic, path_for(state_dir, zone_id), dump(zone_id, learning))

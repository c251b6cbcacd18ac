"""Active demand-response commitments, kept in ``<state_dir>/commitments.json`` so that a daemon
restart during an event neither forgets them (zones shed again until the window ends, then
restore) nor doubles them (no second award on top, no scheduled event opened twice). Events
opened and not yet awarded are kept too (what was asked, until when, the last cfp round), so a
coordinator that starts after a restart or a failover asks the zones again instead of losing an
event it had accepted. Owns the file's format, its atomic write and the conversion to and from
runs; what is committed is the demand-response desk's decision.

The file is small (one entry per running event) and written only when it changes: written to a
temporary file, fsynced and renamed over the old one, so a power cut leaves the old or the new
version, never half of one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from buildingd.control.contract_net import Level, Offer
from buildingd.coordinator.negotiation import DemandResponseRun, NegotiationState
from buildingd.errors import BuildingdError
from buildingd.statefile import write_atomic

FILE_NAME = "commitments.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommittedOffer(_Frozen):
    """What one zone was awarded."""

    shift_k: float = Field(ge=0, le=5)
    dim_pct: float = Field(ge=0, le=100)
    shed_w: float = Field(ge=0)
    comfort_cost: float = Field(ge=0)


class _Event(_Frozen):
    """What a demand-response event asks of the zones, in its conversation, until when."""

    conversation_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(max_length=200)
    target_w: float = Field(gt=0)
    window_s: float = Field(gt=0)
    ends_at: AwareDatetime  # UTC wall clock: the zones restore by themselves then


class Commitment(_Event):
    """One demand-response event past its award: who sheds what until when."""

    committed_w: float = Field(ge=0)
    awarded: dict[str, CommittedOffer]


class OpenEvent(_Event):
    """One demand-response event opened and not yet awarded, and the last cfp round sent
    (answers to it or earlier ones are stale)."""

    round: int = Field(ge=0)


class TakenRequest(_Frozen):
    """A request from outside that named its own conversation (an HTTP ``Idempotency-Key``, a
    request queued on the bus): a digest of what it asked, kept until ``kept_until``, so the
    same request again is the event it opened and the same name on another request is refused."""

    conversation_id: str = Field(min_length=1, max_length=100)
    digest: str = Field(min_length=1, max_length=100)
    kept_until: AwareDatetime


class CommitmentsFile(_Frozen):
    version: Literal[1] = 1
    commitments: list[Commitment] = Field(default_factory=list)
    opened: list[OpenEvent] = Field(default_factory=list)  # absent in files of older versions
    # Keys of scheduled events already opened, kept until the event's end, so a restart inside
    # an event's window does not open it again.
    scheduled_started: list[str] = Field(default_factory=list)
    requests: list[TakenRequest] = Field(default_factory=list)  # absent in older files


class CommitmentsFileError(BuildingdError):
    """The file exists but cannot be read or is not a commitments file."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}")


def load(path: Path) -> CommitmentsFile:
    """The commitments in ``path``; empty when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CommitmentsFile()
    except OSError as err:
        raise CommitmentsFileError(path, str(err)) from err
    except UnicodeDecodeError as err:
        raise CommitmentsFileError(path, f"not UTF-8 text at byte {err.start}") from err
    try:
        return CommitmentsFile.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise CommitmentsFileError(path, f"{where}: {first['msg']}") from err


def save(path: Path, data: CommitmentsFile) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename)."""
    # pydantic's own encoder: ``json.dumps`` with an indent runs in pure Python (15 ms for the
    # awards of a 1,000-zone event, inside the coordinator's step).
    write_atomic(path, data.model_dump_json(indent=1) + "\n")


def to_file(
    runs: Iterable[DemandResponseRun],
    scheduled_started: Iterable[str],
    requests: Iterable[TakenRequest] = (),
) -> CommitmentsFile:
    """What to keep: every run past its award and before its restore, with the zones awarded,
    every run still asking the zones (open or collecting), and the requests taken."""
    runs = list(runs)
    records = [_record(run) for run in runs
               if run.negotiation.state in _IN_FORCE and run.awarded]  # fmt: skip
    opened = [OpenEvent(**_event(run), round=run.round) for run in runs
              if run.negotiation.state in _ASKING]  # fmt: skip
    return CommitmentsFile(commitments=records, opened=opened,
                           scheduled_started=sorted(scheduled_started),
                           requests=sorted(requests, key=lambda r: r.kept_until))  # fmt: skip


_IN_FORCE = (NegotiationState.AWARDING, NegotiationState.EXECUTING)
_ASKING = (NegotiationState.OPEN, NegotiationState.COLLECTING)


def _record(run: DemandResponseRun) -> Commitment:
    """The run's commitment: made again only when its awards or committed watts changed (a
    thousand zones' awards are not built and compared again when the run only moves on, from
    awarding to executing)."""
    kept = run.kept_record
    if kept is not None and kept[1] == run.committed_w and kept[0] == run.awarded:
        return kept[2]  # the same Offer objects: compared by identity, a few µs for a thousand
    record = Commitment(
        **_event(run),
        committed_w=run.committed_w,
        awarded={
            z: CommittedOffer(
                shift_k=o.level.shift_k,
                dim_pct=o.level.dim_pct,
                shed_w=o.shed_w,
                comfort_cost=o.comfort_cost,
            )
            for z, o in sorted(run.awarded.items())
        },
    )
    run.kept_record = (dict(run.awarded), run.committed_w, record)
    return record


def _event(run: DemandResponseRun) -> dict[str, Any]:
    return {"conversation_id": run.negotiation.conversation_id, "reason": run.reason[:200],
            "target_w": run.target_w, "window_s": run.window_s, "ends_at": run.ends_at}  # fmt: skip


def awarded_offers(record: Commitment, zones: Collection[str]) -> dict[str, Offer]:
    """The offers of a kept commitment, for the zones the site still has."""
    return {
        z: Offer(z, Level(o.shift_k, o.dim_pct), o.shed_w, o.comfort_cost)
        for z, o in record.awarded.items()
        if z in zones
    }

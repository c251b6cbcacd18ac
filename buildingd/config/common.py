"""Shared pieces of the file schemas: ids, frozen strict models, ranges."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class Strict(BaseModel):
    """Frozen, unknown keys refused: a typo in a file is an error, not a silently ignored key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(Strict):
    """Closed interval ``[min, max]`` in the point's unit."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.min <= value <= self.max

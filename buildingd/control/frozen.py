"""``replace`` for the frozen dataclasses a decision copies several times (zone state, learning):
the same result as ``dataclasses.replace`` at about a third of its cost. Pure; no knowledge of any
class."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

# Per class: its field names when a copy of the instance dictionary is the same as building a new
# instance (``dataclasses.replace``), else None (then ``dataclasses.replace`` is used).
_PLAIN: dict[type, frozenset[str] | None] = {}


def replace(obj: T, /, **changes: Any) -> T:
    """``dataclasses.replace(obj, **changes)``. Instances of a plain dataclass (every field set by
    ``__init__``, no ``__post_init__``, no ``__slots__``) are copied field by field, without
    running ``__init__``: for them that is what ``__init__`` would do."""
    cls = type(obj)
    try:
        names = _PLAIN[cls]
    except KeyError:
        names = _PLAIN[cls] = _plain_fields(cls)
    if names is None or not changes.keys() <= names:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # and its errors
    new = object.__new__(cls)
    values = obj.__dict__
    state = new.__dict__
    for name in names:
        state[name] = values[name]
    state.update(changes)
    return new


def _plain_fields(cls: type) -> frozenset[str] | None:
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        return None
    if "__slots__" in cls.__dict__ or "__dict__" not in dir(cls):
        return None
    fields = dataclasses.fields(cls)
    if any(not f.init for f in fields):
        return None  # ``dataclasses.replace`` resets those to their default
    # InitVar and ClassVar pseudo-fields are not in ``fields()``; an InitVar would need
    # __post_init__, excluded above.
    return frozenset(f.name for f in fields)

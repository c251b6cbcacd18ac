"""Read YAML keeping each key's line; turn pydantic errors into ``file:line: key: message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from buildingd.errors import BuildingdError, ConfigProblem

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass
class LocatedDoc:
    """A parsed YAML document with the line (1-based) of every key path in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """Line of the deepest prefix of ``path`` that has a recorded position."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path_, message: str) -> ConfigProblem:
        return ConfigProblem(self.file, self.line_of(path), dotted(path), message)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# Bounds on what one file may hold: deeper nesting than this is no configuration, and aliases
# (``&a``/``*a``) repeated into a huge tree ("billion laughs") must not take the daemon's memory.
MAX_DEPTH = 64
MAX_NODES = 200_000


class _Walk:
    """Turns a composed YAML node tree into Python data, recording each key's line."""

    def __init__(self, lines: dict[Path_, int]) -> None:
        self.lines = lines
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes += 1
        line = node.start_mark.line + 1
        if len(path) > MAX_DEPTH:  # only aliases get here: _check_depth ran on the text
            raise _Located(path[:3], line, "an alias refers to itself")
        if self.nodes > MAX_NODES:
            raise _Located(path, line, f"more than {MAX_NODES} values (aliases repeated?)")
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                where = (*path, "?")
                raise _Located(where, line, "a key must be a plain value, not a list or mapping")
            key = self.scalar(key_node, path)
            child = (*path, str(key))
            self.lines[child] = line
            if key in result:
                raise _Located(child, line, "duplicate key")
            result[key] = self.value(value_node, child)
        return result

    def scalar(self, node: yaml.Node, path: Path_) -> Any:
        # The composer has resolved the tag (int, float, bool, null, str, ...); construct it as
        # safe_load would. An unknown tag (``!tz``) is a located problem.
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            raise _Located(path, node.start_mark.line + 1, _yaml_message(err)) from err
        except (ValueError, OverflowError) as err:  # e.g. a timestamp like 2026-13-45
            raise _Located(path, node.start_mark.line + 1, f"invalid value: {err}") from err


class _Located(Exception):
    def __init__(self, path: Path_, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message


def load_yaml(path: Path, display_name: str | None = None) -> LocatedDoc:
    """Parse one YAML file. Raises ``ConfigFileError`` with a located problem on any error."""
    name = display_name or str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigFileError(ConfigProblem(name, None, "", f"cannot read file: {err}")) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        msg = (
            f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8"
        )
        raise ConfigFileError(ConfigProblem(name, line, "", msg)) from None
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> LocatedDoc:
    """Parse YAML text; every failure (syntax, unknown tag, list as a key, too deep, ...) becomes
    a ``ConfigFileError`` with a located problem, never another exception."""
    try:
        _check_depth(text, name)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else None
        msg = f"YAML syntax error: {_yaml_message(err)}"
        raise ConfigFileError(ConfigProblem(name, line, "", msg)) from err
    except yaml.reader.ReaderError as err:  # a control character or similar in the text
        line = text[: err.position].count("\n") + 1
        problem = ConfigProblem(name, line, "", f"unreadable text: {err.reason}")
        raise ConfigFileError(problem) from None
    except yaml.YAMLError as err:
        raise ConfigFileError(ConfigProblem(name, None, "", f"YAML error: {err}")) from err
    doc = LocatedDoc(name, None)
    if node is None:
        doc.data = {}
        return doc
    try:
        doc.data = _Walk(doc.lines).value(node, ())
    except _Located as err:
        problem = ConfigProblem(name, err.line, dotted(err.path), err.message)
        raise ConfigFileError(problem) from None
    return doc


def _check_depth(text: str, name: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` before composing (the composer recurses, so a
    file of 5,000 ``[`` would end in a RecursionError; the event parser does not recurse)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                msg = f"nested deeper than {MAX_DEPTH} levels"
                raise ConfigFileError(ConfigProblem(name, line, "", msg))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _yaml_message(err: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (err.context, err.problem) if p]
    return ", ".join(parts) if parts else str(err).splitlines()[0]


class ConfigFileError(BuildingdError):
    """Internal: a single file could not be parsed at all."""

    def __init__(self, problem: ConfigProblem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def validate(
    model: type[M], doc: LocatedDoc, data: Any = None, prefix: Path_ = ()
) -> tuple[M | None, list[ConfigProblem]]:
    """Validate ``data`` (default: the whole document) into ``model``; locate every error."""
    try:
        return model.model_validate(doc.data if data is None else data), []
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            loc = _clean_loc(e["loc"])
            problems.append(doc.problem((*prefix, *loc), _message(e)))
        return None, problems
    except Exception as err:  # noqa: BLE001  a validator that did not expect this data shape
        return None, [doc.problem(prefix, f"invalid: {type(err).__name__}: {err}")]


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    # pydantic inserts discriminator tags and function names ("modbus-tcp", "function-after[...]")
    # into locations of tagged unions and validators; they are not keys of the file.
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _UNION_TAGS):
            continue
        out.append(part)
    return tuple(out)


_UNION_TAGS = {"sim", "modbus-tcp", "modbus-rtu", "mqtt", "ble", "bacnet"}


def _message(e: Any) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(e["msg"])
    return msg.removeprefix("Value error, ")

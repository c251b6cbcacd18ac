"""Read YAML keeping each key's line; turn pydantic errors into ``file:line: key: message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from buildingd.errors import ConfigProblem

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


def _to_python(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if not isinstance(key_node, yaml.ScalarNode)
                else _scalar(key_node)
            )
            child = (*path, str(key))
            lines[child] = key_node.start_mark.line + 1
            if key in result:
                raise _DuplicateKey(child, key_node.start_mark.line + 1)
            result[key] = _to_python(value_node, child, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # Resolve the scalar exactly as safe_load would (ints, floats, bools, null, strings).
    return yaml.SafeLoader(yaml.serialize(node)).get_single_data()


class _DuplicateKey(Exception):
    def __init__(self, path: Path_, line: int) -> None:
        self.path = path
        self.line = line


def load_yaml(path: Path, display_name: str | None = None) -> LocatedDoc:
    """Parse one YAML file. Raises ``ConfigFileError`` with a located problem on syntax errors."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigFileError(ConfigProblem(name, None, "", f"cannot read file: {err}")) from err
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> LocatedDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else None
        msg = f"YAML syntax error: {err.problem or err}"
        raise ConfigFileError(ConfigProblem(name, line, "", msg)) from err
    doc = LocatedDoc(name, None)
    if node is None:
        doc.data = {}
        return doc
    try:
        doc.data = _to_python(node, (), doc.lines)
    except _DuplicateKey as dup:
        raise ConfigFileError(
            ConfigProblem(name, dup.line, dotted(dup.path), "duplicate key")
        ) from None
    return doc


class ConfigFileError(Exception):
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

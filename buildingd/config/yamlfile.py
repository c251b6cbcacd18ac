"""Read YAML keeping each key's line (built in one pass by ``yamlbuild``); turn pydantic errors
into ``file:line: key: message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from buildingd.config.yamlbuild import (
    FAST_LOADER,
    Builder,
    Located,
    Path_,
    SyntaxProblem,
    yaml_message,
)
from buildingd.errors import BuildingdError, ConfigProblem

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
    """Parse YAML text once, with libyaml where PyYAML has it; every failure (syntax, unknown
    tag, list as a key, too deep, ...) becomes a ``ConfigFileError`` with a located problem,
    never another exception."""
    try:
        return _parse(text, name, FAST_LOADER)
    except _ParserFailed:
        # Text the parser refused: parse it again with PyYAML's own parser, whose messages name
        # the character and what was expected (libyaml's say less). Only broken files pay this.
        return _parse(text, name, yaml.SafeLoader)


class _ParserFailed(Exception):
    """libyaml refused the text."""


def _parse(text: str, name: str, loader: type[yaml.SafeLoader]) -> LocatedDoc:
    doc = LocatedDoc(name, None)
    try:
        doc.data = Builder(doc.lines).feed_all(yaml.parse(text, Loader=loader))
    except Located as err:
        problem = ConfigProblem(name, err.line, dotted(err.path), err.message)
        raise ConfigFileError(problem) from None
    except SyntaxProblem as err:
        problem = ConfigProblem(name, err.line, "", err.message)
        raise ConfigFileError(problem) from None
    except (yaml.MarkedYAMLError, yaml.reader.ReaderError) as err:
        if loader is not yaml.SafeLoader:
            raise _ParserFailed from err
        return _parser_problem(text, name, err)
    except yaml.YAMLError as err:
        raise ConfigFileError(ConfigProblem(name, None, "", f"YAML error: {err}")) from err
    return doc


def _parser_problem(text: str, name: str, err: yaml.YAMLError) -> NoReturn:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else None
        msg = f"YAML syntax error: {yaml_message(err)}"
        raise ConfigFileError(ConfigProblem(name, line, "", msg)) from err
    assert isinstance(err, yaml.reader.ReaderError)  # a control character or similar
    line = text[: err.position].count("\n") + 1
    problem = ConfigProblem(name, line, "", f"unreadable text: {err.reason}")
    raise ConfigFileError(problem) from None


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

"""Build Python data from a YAML file's parse events in one pass, recording each key's line.

No node tree and no second parse: scalars are resolved and constructed as ``safe_load`` would
(each distinct one once), nesting and alias expansion are bounded. Raises ``Located``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import yaml

Path_ = tuple[str | int, ...]

# Bounds on what one file may hold: deeper nesting than this is no configuration, and aliases
# (``&a``/``*a``) repeated into a huge tree ("billion laughs") must not take the daemon's memory.
MAX_DEPTH = 64
MAX_NODES = 200_000

# libyaml's parser when PyYAML was built with it (20-40x faster than the pure-Python one).
FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR_TAG = "tag:yaml.org,2002:str"
_IMPLICIT = yaml.SafeLoader.yaml_implicit_resolvers


class Located(Exception):
    """A problem at a key path and line (1-based)."""

    def __init__(self, path: Path_, line: int, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.message = message


class SyntaxProblem(Exception):
    """A problem of the text as a whole (the composer's errors, nesting), at a line (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class ComposerProblem(SyntaxProblem):
    """A problem the composer finds after the text parsed: reported after any syntax error."""


class _Drain:
    """Reads the rest of the events after a problem, for the problems that take precedence."""

    def __init__(self, depth: int = 0, documents: int = 0, anchors: set[str] | None = None) -> None:
        self.depth = depth
        self.documents = documents
        self.anchors = anchors or set()

    def take(self, event: yaml.Event) -> ComposerProblem | None:
        """Raise nesting too deep; return a composer's problem."""
        if isinstance(event, yaml.CollectionStartEvent):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise SyntaxProblem(_line(event), f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            self.depth -= 1
        elif isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                return _another_document(event)
        elif isinstance(event, yaml.AliasEvent) and event.anchor not in self.anchors:
            return _undefined_alias(event)
        anchor = getattr(event, "anchor", None)
        if anchor is not None and not isinstance(event, yaml.AliasEvent):
            if anchor in self.anchors:
                return _duplicate_anchor(event)
            self.anchors.add(anchor)
        return None


class _Frame:
    __slots__ = ("anchor", "child", "container", "index", "is_map", "key", "path")

    def __init__(self, container: Any, path: Path_, anchor: str | None, is_map: bool) -> None:
        self.container = container
        self.is_map = is_map
        self.path = path
        self.anchor = anchor
        self.index = 0  # next item of a sequence
        self.child: Path_ | None = None  # a mapping's current key path, None when a key is due
        self.key: Any = None  # a mapping's current key


_NOTHING = object()


class Builder:
    """Feed it every event of one YAML stream; ``result`` is the document's data and ``lines``
    the line of every key path (and of every value, where its key has none)."""

    def __init__(self, lines: dict[Path_, int]) -> None:
        self.lines = lines
        self.result: Any = _NOTHING
        self.nodes = 0
        self.documents = 0
        self.stack: list[_Frame] = []
        self.anchors: dict[str, list[yaml.Event]] = {}  # closed anchors: their events
        self.recording: dict[str, list[yaml.Event]] = {}  # anchors whose node is still open
        self.constructor = yaml.constructor.SafeConstructor()
        self.scalars: dict[tuple[str, str], Any] = {}  # (tag, text) -> value; all immutable
        self.plain: dict[str, Any] = {}  # an untagged plain scalar's text -> value

    def feed_all(self, events: Any) -> Any:
        """Build from an event iterator. Problems are reported in the order a parse, then a
        compose, then a walk of the whole text would find them: the first problem stops building,
        but the rest of the text is still parsed, so that a syntax error or too deep a nesting
        later in the file wins over a composer's problem, and that over a value's."""
        problem: Located | ComposerProblem | None = None
        drain = _Drain()
        for event in events:
            if problem is None:
                try:
                    self.feed(event)
                except (Located, ComposerProblem) as err:
                    problem = err
                    drain = _Drain(
                        len(self.stack), self.documents, {*self.anchors, *self.recording}
                    )
                continue
            found = drain.take(event)
            if found is not None and isinstance(problem, Located):
                problem = found
        if problem is not None:
            raise problem
        return {} if self.result is _NOTHING else self.result

    def feed(self, event: yaml.Event) -> None:
        if self.recording:
            for events in self.recording.values():
                events.append(event)
        self._take(event, False)

    def _take(self, event: yaml.Event, replay: bool) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event, replay)

    def _on_end(self, event: yaml.Event, replay: bool) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None and not replay:
            self.anchors[frame.anchor] = self.recording.pop(frame.anchor)

    def _on_document(self, event: yaml.Event, replay: bool) -> None:
        self.documents += 1
        if self.documents > 1:
            raise _another_document(event)

    def _on_alias(self, event: Any, replay: bool) -> None:
        name = event.anchor
        if name in self.recording:
            raise Located(self._next_path()[:3], _line(event), "an alias refers to itself")
        events = self.anchors.get(name)
        if events is None:
            raise _undefined_alias(event)
        for item in events:
            self._take(item, True)

    def _next_path(self) -> Path_:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if not top.is_map:
            return (*top.path, top.index)
        return top.child if top.child is not None else (*top.path, "?")

    def _on_scalar(self, event: Any, replay: bool) -> None:
        anchor = None if replay else event.anchor
        if anchor is not None and (anchor in self.anchors or anchor in self.recording):
            raise _duplicate_anchor(event)
        stack = self.stack
        top = stack[-1] if stack else None
        line = event.start_mark.line + 1
        if top is None:
            path: Path_ = ()
        elif top.is_map:
            if top.child is None:
                self._key(top, event, line, anchor)
                return
            path = top.child
        else:
            path = (*top.path, top.index)
        self._count(path, line)
        self._place(top, self._scalar(event, path, line))
        if anchor is not None:
            self.anchors[anchor] = [event]

    def _place(self, top: _Frame | None, value: Any) -> None:
        """``value`` into the open container (the document itself when none is open)."""
        if top is None:
            self.result = value
        elif top.is_map:
            top.container[top.key] = value
            top.child = None
        else:
            top.container.append(value)
            top.index += 1

    def _on_start(self, event: Any, replay: bool) -> None:
        line = event.start_mark.line + 1
        if not replay and len(self.stack) >= MAX_DEPTH:
            raise SyntaxProblem(line, f"nested deeper than {MAX_DEPTH} levels")
        anchor = None if replay else event.anchor
        if anchor is not None and (anchor in self.anchors or anchor in self.recording):
            raise _duplicate_anchor(event)
        top = self.stack[-1] if self.stack else None
        if top is not None and top.is_map and top.child is None:
            where = (*top.path, "?")
            raise Located(where, line, "a key must be a plain value, not a list or mapping")
        path = self._next_path()
        self._count(path, line)
        is_map = isinstance(event, yaml.MappingStartEvent)
        container: Any = {} if is_map else []
        self._place(top, container)
        self.stack.append(_Frame(container, path, anchor, is_map))
        if anchor is not None:
            self.recording[anchor] = [event]

    def _count(self, path: Path_, line: int) -> None:
        self.nodes += 1
        if len(path) > MAX_DEPTH:  # only alias expansion gets here: nesting was checked
            raise Located(path[:3], line, f"aliases nest deeper than {MAX_DEPTH} levels")
        if self.nodes > MAX_NODES:
            raise Located(path, line, f"more than {MAX_NODES} values (aliases repeated?)")
        self.lines.setdefault(path, line)

    _handlers: ClassVar[dict[type, Callable[[Builder, Any, bool], None]]] = {
        yaml.ScalarEvent: _on_scalar,
        yaml.MappingStartEvent: _on_start,
        yaml.SequenceStartEvent: _on_start,
        yaml.MappingEndEvent: _on_end,
        yaml.SequenceEndEvent: _on_end,
        yaml.AliasEvent: _on_alias,
        yaml.DocumentStartEvent: _on_document,
    }

    def _key(self, top: _Frame, event: Any, line: int, anchor: str | None) -> None:
        if not isinstance(event, yaml.ScalarEvent):
            where = (*top.path, "?")
            raise Located(where, line, "a key must be a plain value, not a list or mapping")
        key = self._scalar(event, top.path, line)
        child = (*top.path, str(key))
        self.lines[child] = line
        if key in top.container:
            raise Located(child, line, "duplicate key")
        top.child = child
        top.key = key
        if anchor is not None:
            self.anchors[anchor] = [event]

    def _scalar(self, event: yaml.ScalarEvent, path: Path_, line: int) -> Any:
        text = event.value
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return text  # quoted, or ``!``: a string
            if text in self.plain:
                return self.plain[text]
            value = self._construct(_resolve_plain(text), text, event, path, line)
            self.plain[text] = value
            return value
        return self._construct(tag, text, event, path, line)

    def _construct(self, tag: str, text: str, event: Any, path: Path_, line: int) -> Any:
        if tag == _STR_TAG:
            return text
        key = (tag, text)
        if key in self.scalars:
            return self.scalars[key]
        # Construct it as safe_load would. An unknown tag (``!tz``) is a located problem.
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            raise Located(path, line, yaml_message(err)) from err
        except (ValueError, OverflowError, KeyError) as err:  # 2026-13-45, !!bool x
            raise Located(path, line, f"invalid value: {err}") from err
        finally:
            self.constructor.constructed_objects.clear()
        self.scalars[key] = value
        return value


def _another_document(event: yaml.Event) -> ComposerProblem:
    msg = "expected a single document in the stream, but found another document"
    return ComposerProblem(_line(event), f"YAML syntax error: {msg}")


def _undefined_alias(event: yaml.AliasEvent) -> ComposerProblem:
    return ComposerProblem(
        _line(event), f"YAML syntax error: found undefined alias {event.anchor!r}"
    )


def _duplicate_anchor(event: Any) -> ComposerProblem:
    msg = f"found duplicate anchor {event.anchor!r}; first occurrence, second occurrence"
    return ComposerProblem(_line(event), f"YAML syntax error: {msg}")


def _resolve_plain(text: str) -> str:
    """The tag YAML 1.1's implicit resolvers give an untagged plain scalar (as
    ``Resolver.resolve`` does, without path resolvers, which the safe loader has none of)."""
    for tag, regexp in _IMPLICIT.get(text[0] if text else "", []) + _IMPLICIT.get(None, []):
        if regexp.match(text):
            return str(tag)
    return _STR_TAG


def _line(event: Any) -> int:
    return int(event.start_mark.line) + 1


def yaml_message(err: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (err.context, err.problem) if p]
    return ", ".join(parts) if parts else str(err).splitlines()[0]

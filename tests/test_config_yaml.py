"""The one-pass YAML reader: the same data as ``yaml.safe_load``, every key's line, and broken
text reported as ``file:line: key: message`` with PyYAML's own wording."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from buildingd.config import yamlbuild
from buildingd.config.yamlfile import ConfigFileError, parse_yaml

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, width=64)
    | st.text(max_size=12)
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(data=documents, flow=st.booleans())
def test_any_document_reads_as_safe_load_reads_it(data: object, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    expected = yaml.safe_load(text)
    assert parse_yaml(text, "f.yaml").data == ({} if expected is None and not text else expected)


def test_every_key_has_its_line() -> None:
    text = (
        "site: demo\n"
        "zones:\n"
        "  - id: a\n"
        "    windows: {area_m2: 5,\n"
        "              orientation: south}\n"
        "  - id: b\n"
        "when: 2026-01-05\n"
    )
    doc = parse_yaml(text, "site.yaml")
    assert doc.data["when"].isoformat() == "2026-01-05"
    assert doc.lines[("site",)] == 1
    assert doc.lines[("zones", 0)] == 3
    assert doc.lines[("zones", 0, "windows", "orientation")] == 5
    assert doc.lines[("zones", 1, "id")] == 6
    assert str(doc.problem(("zones", 1, "id", "x"), "bad")) == "site.yaml:6: zones[1].id.x: bad"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\n\tb: 2\n", "f:2: (file): YAML syntax error: while scanning for the next token, "
         "found character '\\t' that cannot start any token"),
        ("a: 1\nb: [1,\n", "f:3: (file): YAML syntax error: while parsing a flow node, "
         "expected the node content, but found '<stream end>'"),
        ("a: 1\na: 2\n", "f:2: a: duplicate key"),
        ("a:\n  b: !tz Berlin\n", "f:2: a.b: could not determine a constructor for the tag '!tz'"),
        ("a: !!bool maybe\n", "f:1: a: invalid value: 'maybe'"),
        ("x: &a [*a]\n", "f:1: x[0]: an alias refers to itself"),
        ("a: *b\n", "f:1: (file): YAML syntax error: found undefined alias 'b'"),
        ("a: 1\n---\nb: 2\n", "f:2: (file): YAML syntax error: expected a single document in "
         "the stream, but found another document"),
        ("? [a, b]\n: 1\n", "f:1: ?: a key must be a plain value, not a list or mapping"),
        ("x: " + "[" * 70 + "]" * 70 + "\n", "f:1: (file): nested deeper than 64 levels"),
        # A value's problem early in the file does not hide a syntax error later on.
        ("a: 1\na: 2\nb: [\n", "f:4: (file): YAML syntax error: while parsing a flow node, "
         "expected the node content, but found '<stream end>'"),
    ],
)  # fmt: skip
def test_broken_text_is_one_located_problem(text: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_yaml(text, "f")
    assert str(caught.value.problem) == expected


def test_aliases_are_expanded_and_bounded() -> None:
    doc = parse_yaml("a: &x {b: [1, 2]}\nc: *x\nd: [*x, *x]\n", "f")
    assert doc.data == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}, "d": [{"b": [1, 2]}] * 2}
    assert doc.data["c"] is not doc.data["a"]  # each use is its own value, as in the file
    laughs = "l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8)
    )
    with pytest.raises(ConfigFileError) as caught:
        parse_yaml(laughs, "f")
    assert f"more than {yamlbuild.MAX_NODES} values" in str(caught.value)

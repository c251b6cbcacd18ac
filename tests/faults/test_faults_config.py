"""Fault suite, configuration: no edit of the demo's files can make ``check`` print a traceback
or stop a running daemon. Broken files are reported as ``file:line: key: message``; a broken
reload keeps the running configuration and says so in STATUS= and /metrics."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildingd.service.cli import main
from tests.conftest import REPO
from tests.daemon_proc import Running, start_daemon

# ``file:line: key: message`` (site files) or ``source: key: message`` (environment, no file).
PROBLEM = re.compile(r"^(\S+:\d+: \S.*: .+|environment \S+: \S+: .+)$")
SUMMARY = re.compile(r"^\d+ problem\(s\) found$")

# Constructs a careless edit or a corrupted file brings in, each valid on a line of its own.
CONSTRUCTS = [
    "events:",
    "points:",
    "tz: !tz Europe/Berlin",
    "? [a, b]\n: 1",
    "? {a: 1}\n: 2",
    "x: &a [*a]",
    "deep: " + "[" * 500,
    "deep: " + "{a: " * 80 + "1" + "}" * 80,
    "bad: !!python/object:os.system ls",
    "date: 2026-13-45",
    "n: .nan",
    "big: 1e400",
    "laughs: &l [a, a, a, a, a, a, a, a, a, a]",
    "\tindented: tab",
    "ctrl: \x07",
    "---\nsecond: doc",
    "- a list item",
    "key: 'unterminated",
    "<<: {merge: 1}",
    "~: null key",
    "1: int key",
]

FILES = ["site.yaml", "devices/demo-sim.yaml", "devices/demo-modbus.yaml",
         "devices/demo-mqtt.yaml", "policies/office.yaml"]  # fmt: skip


def copy_site(dest: Path) -> Path:
    shutil.copy(REPO / "site.yaml", dest / "site.yaml")
    shutil.copytree(REPO / "devices", dest / "devices", ignore=shutil.ignore_patterns("*.example"))
    shutil.copytree(REPO / "policies", dest / "policies")
    return dest


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` after one to three random edits: truncation, a construct inserted at a
    random line (at a random indent), a line emptied after its key or deleted, random bytes,
    the whole file re-encoded."""
    data = original
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        where = draw(st.integers(0, len(lines)))
        kind = draw(
            st.sampled_from(["truncate", "insert", "empty", "delete", "bytes", "encode", "text"])
        )
        if kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "insert":
            indent = b" " * draw(st.sampled_from([0, 2, 4, 6, 8]))
            item = draw(st.sampled_from(CONSTRUCTS)).encode()
            lines.insert(where, indent + item.replace(b"\n", b"\n" + indent))
            data = b"\n".join(lines)
        elif kind == "empty" and where < len(lines) and b":" in lines[where]:
            lines[where] = lines[where].split(b":", 1)[0] + b":"
            data = b"\n".join(lines)
        elif kind == "delete" and where < len(lines):
            del lines[where]
            data = b"\n".join(lines)
        elif kind == "bytes":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif kind == "encode":
            text = data.decode("utf-8", errors="replace") + "\n# Bürogebäude, café\n"
            data = text.encode(draw(st.sampled_from(["latin-1", "utf-16", "cp1252"])), "replace")
        elif kind == "text":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.text(max_size=20)).encode() + data[at:]
    return data


def run_check(site: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["check", "--site", str(site)])
    return rc, out.getvalue(), err.getvalue()


def assert_reported(rc: int, out: str, err: str) -> None:
    """Either ``ok`` or every line a located problem, then the count."""
    if rc == 0:
        assert out.startswith("ok: site "), out
        return
    assert rc == 1, (rc, out, err)
    lines = err.rstrip("\n").split("\n")
    assert SUMMARY.match(lines[-1]), err
    assert len(lines) >= 2
    for line in lines[:-1]:
        assert PROBLEM.match(line), line


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_check_reports_every_damaged_file_and_never_tracebacks(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = copy_site(Path(tmp))
        for name in data.draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=2)):
            path = site / name
            path.write_bytes(data.draw(damaged(path.read_bytes()), label=name))
        rc, out, err = run_check(site)  # an exception here fails the test with its traceback
        assert_reported(rc, out, err)


# What the issue found tracebacking, each as an edit of one file: (file, edit, located at).
def _append(text: str) -> Callable[[bytes], bytes]:
    return lambda b: b + text.encode()


def _empty_points(b: bytes) -> bytes:
    # The first device's points emptied: ``points:`` with nothing under it.
    head, _, rest = b.partition(b"    points:\n")
    tail = rest.split(b"\n  - id:", 1)[1]
    return head + b"    points:\n  - id:" + tail


KNOWN = {
    "empty-points": ("devices/demo-sim.yaml", _empty_points, "devices[0].points"),
    "empty-events": ("policies/office.yaml", _append("demand_response:\n  events:\n"), ""),
    "unknown-tag": ("policies/office.yaml", _append("tz: !tz Europe/Berlin\n"), "tz"),
    "list-key": ("policies/office.yaml", _append("? [a, b]\n: 1\n"), "?"),
    "latin-1": ("policies/office.yaml", lambda b: b + "# Bürogebäude\n".encode("latin-1"), ""),
    "deep": ("site.yaml", _append("x: " + "[" * 5000 + "\n"), ""),
    # cut inside ``occupied: {heating_c: 21.0, ...}``, as a power cut mid-save leaves it
    "truncated": ("policies/office.yaml", lambda b: b[: b.index(b"heating_c: 21.0") + 12], ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(KNOWN))
def test_check_and_run_report_each_known_breakage_in_one_line(case: str, tmp_path: Path) -> None:
    name, edit, key = KNOWN[case]
    site = copy_site(tmp_path)
    path = site / name
    path.write_bytes(edit(path.read_bytes()))
    for command in (["check"], ["run", "--duration", "1", "--state-dir", str(tmp_path / "s")]):
        proc = subprocess.run(
            [sys.executable, "-m", "buildingd", *command, "--site", str(site)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        problems = proc.stderr.rstrip("\n").split("\n")[:-1]
        assert any(p.startswith(f"{path}:") and f": {key}" in p for p in problems), proc.stderr
        assert all(PROBLEM.match(p) for p in problems), proc.stderr


@pytest.mark.slow
def test_a_missing_token_file_is_named_by_check_and_run(tmp_path: Path) -> None:
    site = copy_site(tmp_path)
    config = tmp_path / "buildingd.toml"
    config.write_text(f'[http]\ntoken_file = "{tmp_path}/no-such-token"\n')
    for command in (["check"], ["run", "--duration", "1", "--state-dir", str(tmp_path / "s")]):
        proc = subprocess.run(
            [sys.executable, "-m", "buildingd", *command, "--site", str(site)]
            + ["--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[0] == (
            f"{config}:2: http.token_file: cannot read {tmp_path}/no-such-token: "
            "No such file or directory"
        )


def reload(daemon: Running) -> str:
    """SIGHUP and the READY=1 notification that ends the reload (its STATUS= says how it went)."""
    daemon.proc.send_signal(signal.SIGHUP)
    return daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)


@pytest.mark.slow
@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_broken_reloads_never_stop_the_daemon(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "site").mkdir()
        site = copy_site(tmp_path / "site")
        daemon = start_daemon(site, tmp_path)
        try:
            daemon.wait_for(lambda m: "READY=1" in m, timeout_s=60)
            originals = {name: (site / name).read_bytes() for name in FILES}
            # Every breakage the issue found (the daemon died at the third), then random damage.
            edits = [(name, edit(originals[name])) for name, edit, _ in KNOWN.values()]
            for _ in range(4):
                name = data.draw(st.sampled_from(FILES))
                edits.append((name, data.draw(damaged(originals[name]))))
            failed = 0
            for name, content in edits:
                (site / name).write_bytes(content)
                note = reload(daemon)
                assert daemon.proc.poll() is None, daemon.output[-20:]
                failed += "reload failed" in note
                (site / name).write_bytes(originals[name])
            assert failed >= len(KNOWN)
            name, edit, _ = KNOWN["unknown-tag"]
            (site / name).write_bytes(edit(originals[name]))
            assert f"reload failed: {site / name}:" in reload(daemon)
            failed += 1
            # STATUS= keeps saying so (the periodic summary, not only the reload's own line).
            status = daemon.wait_for(
                lambda m: "READY=1" not in m and "running the previous configuration" in m
            )
            assert f"{site / name}:" in status
            code, metrics = daemon.get("/metrics")
            assert code == 200
            assert f'buildingd_reloads_total{{result="failed"}} {failed}' in metrics
            assert "buildingd_config_reload_ok 0" in metrics
            # A good edit still takes effect.
            office = site / "policies/office.yaml"
            office.write_text(
                originals["policies/office.yaml"].decode().replace("max_rounds: 3", "max_rounds: 4")
            )
            assert "reload failed" not in reload(daemon)
            daemon.wait_for_output(r"reloaded: policies changed: office")
            code, metrics = daemon.get("/metrics")
            assert "buildingd_config_reload_ok 1" in metrics
            assert daemon.proc.poll() is None
        finally:
            daemon.close()


def test_a_latin_1_settings_file_is_a_located_problem(tmp_path: Path) -> None:
    site = copy_site(tmp_path)
    config = tmp_path / "buildingd.toml"
    config.write_bytes('log_level = "info"\n# Bürogebäude\n'.encode("latin-1"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["check", "--site", str(site), "--config", str(config)])
    assert rc == 1
    assert err.getvalue().splitlines()[0] == (
        f"{config}:2: (file): not UTF-8 text; save the file as UTF-8"
    )

"""Journal logging: `<N>` priority prefixes only when stderr is the journal stream (checked with a
real process whose JOURNAL_STREAM names its stderr), one line per event, ids, audit lines,
availability once per change."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildingd.audit import NOTICE, audit, audit_command, audit_decision
from buildingd.service.journal import (
    QUIET_LOGGERS,
    AvailabilityLog,
    log_ids,
    setup_logging,
    stream_is_journal,
    syslog_priority,
    with_ids,
)

REPO = Path(__file__).resolve().parent.parent

PLAIN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
    r"(DEBUG|INFO|NOTICE|WARNING|ERROR|CRITICAL)\s+"
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, quiet_level in quiet.items():
        logging.getLogger(name).setLevel(quiet_level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def capture(journal: bool, level: str = "info") -> io.StringIO:
    out = io.StringIO()
    setup_logging(level, stream=out, journal=journal)
    return out


def test_syslog_priorities() -> None:
    assert [
        syslog_priority(level)
        for level in (
            logging.CRITICAL,
            logging.ERROR,
            logging.WARNING,
            NOTICE,
            logging.INFO,
            logging.DEBUG,
        )
    ] == [2, 3, 4, 5, 6, 7]


def test_journal_stream_detection(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f, open(tmp_path / "other", "w") as g:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(f.fileno(), env)
        assert not stream_is_journal(g.fileno(), env)  # redirected elsewhere
        assert not stream_is_journal(f.fileno(), {})
        assert not stream_is_journal(f.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(f.fileno(), {"JOURNAL_STREAM": "1:x"})


def run_logging_process(tmp_path: Path, journal_stream: bool) -> list[str]:
    """Run a process that logs to its stderr (a file); JOURNAL_STREAM names that file when
    ``journal_stream`` is true, as systemd does for a unit whose stderr is the journal."""
    script = textwrap.dedent(
        """
        import logging
        from buildingd.audit import audit_command
        from buildingd.service.journal import setup_logging, with_ids
        setup_logging("info")
        log = logging.getLogger("buildingd.agents.device")
        log.debug("not shown at info")
        log.info("started")
        with_ids(log, device="ahu1").warning("unavailable: %s", "timeout after 2.0 s")
        audit_command("ahu1", "supply_sp", 18.5, source="coordinator", outcome="written")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("poll crashed")
        """
    )
    err_path = tmp_path / ("journal" if journal_stream else "plain")
    with open(err_path, "w") as err:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("JOURNAL_STREAM", None)
        if journal_stream:
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run([sys.executable, "-c", script], env=env, stderr=err, timeout=60)
    assert proc.returncode == 0, err_path.read_text()
    return err_path.read_text().splitlines()


def test_priority_prefixes_when_stderr_is_the_journal(tmp_path: Path) -> None:
    lines = run_logging_process(tmp_path, journal_stream=True)
    # One line per event: the traceback is folded into its line.
    assert len(lines) == 4, lines
    assert lines[0] == "<6>agents.device: started"
    assert lines[1] == "<4>agents.device: [device=ahu1] unavailable: timeout after 2.0 s"
    assert lines[2] == (
        "<5>audit: [device=ahu1 point=supply_sp] command value=18.5 source=coordinator "
        "outcome=written"
    )
    assert lines[3].startswith(
        "<3>agents.device: poll crashed\\nTraceback (most recent call last):"
    )
    assert lines[3].endswith("ZeroDivisionError: division by zero")


def test_plain_format_with_time_otherwise(tmp_path: Path) -> None:
    lines = run_logging_process(tmp_path, journal_stream=False)
    assert not any(line.startswith("<") for line in lines)
    assert PLAIN_LINE.match(lines[0]) and lines[0].endswith("INFO    agents.device: started")
    assert lines[1].endswith(
        "WARNING agents.device: [device=ahu1] unavailable: timeout after 2.0 s"
    )
    assert " NOTICE  audit: [device=ahu1 point=supply_sp] command value=18.5" in lines[2]
    assert lines[3].endswith("ERROR   agents.device: poll crashed")
    # On a terminal the traceback stays readable on its own lines.
    assert lines[4] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"


@pytest.mark.usefixtures("restore_logging")
def test_ids_from_context_adapter_and_extra() -> None:
    out = capture(journal=True)
    log = logging.getLogger("buildingd.control.zone")
    with log_ids(zone="f1-meeting"):
        log.info("mode occupied")
        with log_ids(device="f1-meeting-thermostat"):
            # A library's logger inside the same context carries the ids too.
            logging.getLogger("pymodbus.logging").warning("retry")
        with_ids(log, point="heating_sp").info("setpoint 21.0")
        with_ids(with_ids(log, device="d1"), zone="override").info("nested")
    log.info("outside", extra={"log_ids": {"device": "x y"}})
    assert out.getvalue().splitlines() == [
        "<6>control.zone: [zone=f1-meeting] mode occupied",
        "<4>pymodbus.logging: [device=f1-meeting-thermostat zone=f1-meeting] retry",
        "<6>control.zone: [zone=f1-meeting point=heating_sp] setpoint 21.0",
        "<6>control.zone: [device=d1 zone=override] nested",
        '<6>control.zone: [device="x y"] outside',
    ]


@pytest.mark.usefixtures("restore_logging")
async def test_ids_follow_asyncio_tasks() -> None:
    out = capture(journal=True)
    log = logging.getLogger("buildingd.agents.device")

    async def agent(device: str) -> None:
        with log_ids(device=device):
            await asyncio.sleep(0)
            log.info("polled")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(agent("a"))
        tg.create_task(agent("b"))
    log.info("done")
    assert sorted(out.getvalue().splitlines()) == [
        "<6>agents.device: [device=a] polled",
        "<6>agents.device: [device=b] polled",
        "<6>agents.device: done",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_audit_lines_survive_a_high_log_level() -> None:
    out = capture(journal=True, level="error")
    logging.getLogger("buildingd.x").warning("filtered out")
    audit_command(
        "f1-meeting-thermostat",
        "heating_sp",
        21.5,
        source="zone:f1-meeting",
        outcome="rejected",
        zone="f1-meeting",
        reason="outside safety band 16..24",
    )
    audit_decision("allocation", "granted", zone="f2-office-a", conversation="c-17", granted_w=1200)
    audit("reload", outcome="kept-old", detail=None)
    # Audit lines logged straight to the logger (at info) pass too.
    logging.getLogger("buildingd.audit").info("command value=1 outcome=written")
    assert out.getvalue().splitlines() == [
        "<5>audit: [device=f1-meeting-thermostat zone=f1-meeting point=heating_sp] command "
        'value=21.5 source=zone:f1-meeting outcome=rejected reason="outside safety band 16..24"',
        "<5>audit: [zone=f2-office-a] decision kind=allocation outcome=granted conversation=c-17 "
        "granted_w=1200",
        "<5>audit: reload outcome=kept-old",
        "<6>audit: command value=1 outcome=written",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_levels_and_quiet_libraries() -> None:
    out = capture(journal=False, level="info")
    logging.getLogger("apscheduler.executors.default").info("Running job")
    logging.getLogger("buildingd.app").debug("hidden")
    logging.getLogger("buildingd.app").info("shown")
    assert [line.split(maxsplit=3)[3] for line in out.getvalue().splitlines()] == ["app: shown"]

    out = capture(journal=False, level="debug")  # replaces the previous handler
    logging.getLogger("apscheduler.executors.default").info("Running job")
    assert "apscheduler.executors.default: Running job" in out.getvalue()
    root_handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is out]
    assert len(root_handlers) == 1
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", stream=io.StringIO())


@pytest.mark.usefixtures("restore_logging")
def test_availability_logged_once_per_change() -> None:
    out = capture(journal=True, level="debug")
    availability = AvailabilityLog()
    assert availability.update("ahu1", True)
    assert not availability.update("ahu1", True)
    assert availability.update("ahu1", False, "Modbus timeout after 2.0 s")
    for _ in range(5):  # every failed poll after that is silent
        assert not availability.update("ahu1", False, "Modbus timeout after 2.0 s")
    assert availability.unavailable() == ["ahu1"]
    assert availability.update("ahu1", True)
    availability.forget("ahu1")
    assert availability.update("ahu1", False)
    assert out.getvalue().splitlines() == [
        "<7>availability: [device=ahu1] available",
        "<4>availability: [device=ahu1] unavailable: Modbus timeout after 2.0 s",
        "<6>availability: [device=ahu1] back",
        "<4>availability: [device=ahu1] unavailable: no answer",
    ]


def test_id_names_must_be_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"), log_ids(**{"bad name": "x"}):
        pass

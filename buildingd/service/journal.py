"""Logging for the journal and the terminal: one line per event, syslog ``<N>`` priority prefixes
when stderr is the journal, device/zone ids on every line, an ``audit`` logger for actuator
commands and coordinator decisions, and availability logged once per change."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from buildingd.audit import ID_ORDER, NOTICE, audit_log
from buildingd.audit import value_text as _value_text

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Libraries that log routine chatter at INFO (apscheduler: every job run; amqtt: every client).
# Below debug level only their warnings and errors reach the journal.
QUIET_LOGGERS = ("apscheduler", "amqtt", "pymodbus", "bleak", "aiomqtt", "influxdb_client")

_HANDLER_MARK = "_buildingd_handler"

_context_ids: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("buildingd_log_ids", default=())


def syslog_priority(levelno: int) -> int:
    """The syslog priority (RFC 5424 section 6.2.1 severities) for a logging level."""
    if levelno >= logging.CRITICAL:
        return 2  # crit
    if levelno >= logging.ERROR:
        return 3  # err
    if levelno >= logging.WARNING:
        return 4  # warning
    if levelno >= NOTICE:
        return 5  # notice
    if levelno >= logging.INFO:
        return 6  # info
    return 7  # debug


def stream_is_journal(fd: int, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is the journal's stream socket: systemd sets ``JOURNAL_STREAM`` to the
    ``<st_dev>:<st_ino>`` of the stream it connected stdout/stderr to (systemd.exec(5)). A
    redirect (``2>file``) changes the inode, so the plain format is used then."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


def _ids_text(ids: Mapping[str, str]) -> str:
    keys = [k for k in ID_ORDER if k in ids] + [k for k in ids if k not in ID_ORDER]
    return " ".join(f"{k}={_value_text(ids[k])}" for k in keys)


def _clean_ids(ids: Mapping[str, object | None]) -> dict[str, str]:
    out = {}
    for key, value in ids.items():
        if not key.isidentifier():
            raise ValueError(f"log id name {key!r} must be an identifier")
        if value is not None:
            out[key] = str(value)
    return out


@contextlib.contextmanager
def log_ids(**ids: object | None) -> Iterator[None]:
    """Attach ids (``device=``, ``zone=``, ...) to every line logged in this context, including
    lines from libraries. asyncio tasks copy the context when created, so an agent sets its ids
    once at the top of its task."""
    merged = dict(_context_ids.get())
    merged.update(_clean_ids(ids))
    token = _context_ids.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context_ids.reset(token)


class IdsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed ids to each line: ``with_ids(log, device="ahu1").warning(...)``."""

    def __init__(self, logger: logging.Logger, ids: Mapping[str, str]) -> None:
        super().__init__(logger, {"log_ids": dict(ids)})
        self.ids = dict(ids)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra["log_ids"] = {**self.ids, **dict(extra.get("log_ids") or {})}
        kwargs["extra"] = extra
        return msg, kwargs


def with_ids(logger: logging.Logger | IdsAdapter, **ids: object | None) -> IdsAdapter:
    base_ids = logger.ids if isinstance(logger, IdsAdapter) else {}
    base = logger.logger if isinstance(logger, IdsAdapter) else logger
    return IdsAdapter(base, {**base_ids, **_clean_ids(ids)})


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    """The ids of a record: the context's, overridden by those passed with the call."""
    ids = dict(_context_ids.get())
    extra = getattr(record, "log_ids", None)
    if isinstance(extra, Mapping):
        ids.update({str(k): str(v) for k, v in extra.items() if v is not None})
    return ids


class _IdsFilter(logging.Filter):
    """Resolves ids when the record is handled, i.e. in the context of the logging call."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.log_ids = record_ids(record)
        return True


def _short_name(name: str) -> str:
    return name.removeprefix("buildingd.")


class JournalFormatter(logging.Formatter):
    """``<N>name: [ids] message`` on one line; journald adds time, host and unit itself and
    turns the ``<N>`` prefix into the entry's priority (sd-daemon(3)). A newline would split the
    event into entries of default priority, so newlines (tracebacks) are escaped as ``\\n``."""

    def format(self, record: logging.LogRecord) -> str:
        text = _body(self, record)
        text = text.replace("\r", "").replace("\n", "\\n")
        return f"<{syslog_priority(record.levelno)}>{text}"


class PlainFormatter(logging.Formatter):
    """``2025-01-31 14:02:03.123+01:00 WARNING name: [ids] message`` for a terminal or a file,
    local time with its offset so lines before and after a clock change stay comparable."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).astimezone()
        when = stamp.isoformat(sep=" ", timespec="milliseconds")
        return f"{when} {record.levelname:<7} {_body(self, record)}"


def _body(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    ids = getattr(record, "log_ids", None)
    if not isinstance(ids, Mapping):
        ids = record_ids(record)
    message = record.getMessage()
    if ids:
        message = f"[{_ids_text(ids)}] {message}"
    text = f"{_short_name(record.name)}: {message}"
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        text = f"{text}\n{record.exc_text}"
    if record.stack_info:
        text = f"{text}\n{formatter.formatStack(record.stack_info)}"
    return text


def setup_logging(
    level: str | int = "info",
    *,
    stream: TextIO | None = None,
    journal: bool | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) in the journal format when it is the journal (or when
    ``journal`` says so), else in the plain format. Calling again replaces the handler. Audit
    lines are logged whatever the level."""
    out = sys.stderr if stream is None else stream
    if journal is None:
        try:
            journal = stream_is_journal(out.fileno())
        except (OSError, ValueError, AttributeError):
            journal = False
    if isinstance(level, int):
        levelno = level
    elif level.lower() in LEVELS:
        levelno = LEVELS[level.lower()]
    else:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")

    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal else PlainFormatter())
    handler.addFilter(_IdsFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if levelno <= logging.DEBUG else logging.WARNING
        )
    # Audit lines must never be filtered by a higher log_level: the audit logger's own level is
    # the only level check a record of that logger passes through.
    audit_log.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


class AvailabilityLog:
    """Logs device availability once per change (warning when lost, info when back), not once
    per failed poll. The first report of an available device is logged at debug only."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else logging.getLogger("buildingd.availability")
        self._available: dict[str, bool] = {}

    def update(self, device: str, available: bool, reason: str | None = None) -> bool:
        """Record the state of ``device``; returns whether it changed (and a line was logged)."""
        previous = self._available.get(device)
        self._available[device] = available
        if previous is available:
            return False
        extra = {"log_ids": {"device": device}}
        if not available:
            self._log.warning("unavailable: %s", reason or "no answer", extra=extra)
        elif previous is None:
            self._log.debug("available", extra=extra)
        else:
            self._log.info("back", extra=extra)
        return True

    def forget(self, device: str) -> None:
        """The device was removed (reload): its next report starts fresh."""
        self._available.pop(device, None)

    def unavailable(self) -> list[str]:
        return sorted(d for d, up in self._available.items() if not up)

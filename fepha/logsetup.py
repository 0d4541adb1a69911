"""Logging from syslod.cfg, the same for every program: a rotating file under $FEPROOT/<dir> and stderr.

`OnceLogger` logs an error once per error state (when it starts and when it ends), not once per poll,
so a dead device does not flood the log.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

from fepha.config import ConfigError, LogConfig, feproot

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    """Times in UTC, ISO 8601 with a Z (2026-11-30T17:40:44.123Z), whatever the process's time zone: a
    container's is UTC unless the operator sets one, the host's often is not, and a log line without its
    zone could not be set beside keepalived's (start.sh: `date -u`), the other node's, or SCADA's UTC
    timestamps (CP56Time2a)."""

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self.converter = time.gmtime  # on the instance: as a class attribute it would be bound as a method


class LogFile(logging.handlers.RotatingFileHandler):
    """The rotating log file, for a disk that fills up: the program goes on, and what it cannot write to the
    file costs one line on stderr when that starts and one when the file can be written again (with the
    count of records that failed), not logging's traceback per record (about 15 lines each)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed = 0  # records that could not be written since the file last worked
        self._ok = True

    def emit(self, record: logging.LogRecord) -> None:
        self._ok = True
        super().emit(record)  # a failure comes back through handleError
        if self._ok and self.failed:
            line = (f"{_when(self, record)} WARNING fepha.logsetup: {self.baseFilename} can be written again; "
                    f"{self.failed} records failed to be written to it meanwhile (stderr has them)\n")
            self.failed = 0
            sys.stderr.write(line)
            if self.stream is not None:
                with contextlib.suppress(OSError):  # it failed again: the next record says so
                    self.stream.write(line)
                    self.stream.flush()

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._ok = False
        self.failed += 1
        if self.failed == 1:
            sys.stderr.write(f"{_when(self, record)} ERROR fepha.logsetup: cannot write {self.baseFilename}: "
                             f"{exc.strerror or exc}: records are not written to it (stderr has them) until it "
                             "can be written again\n")


def setup(program: str, cfg: LogConfig, root: Path | None = None, console: bool | None = None) -> None:
    """`console` overrides syslod.cfg's (a command that prints its own report logs to the file only).
    ConfigError when the log directory or file cannot be made."""
    handlers: list[logging.Handler] = []
    if cfg.dir:
        d = Path(cfg.dir)
        d = d if d.is_absolute() else (root or feproot()) / d
        what = f"[log] dir = {cfg.dir!r} (syslod.cfg or FEP_LOG_DIR)"
        try:  # a directory that cannot be made or written is a configuration error: one line, exit 2
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot create the directory {d}: {exc.strerror or exc}") from None
        try:
            handlers.append(LogFile(d / f"{program}.log", maxBytes=cfg.max_bytes, backupCount=cfg.backups))
        except OSError as exc:
            raise ConfigError(f"{what}: cannot write {d / f'{program}.log'}: {exc.strerror or exc}") from None
    if (cfg.console if console is None else console) or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(UTCFormatter(FORMAT))
    logging.basicConfig(level=cfg.level, handlers=handlers, force=True)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class OnceLogger:
    """Logs a problem when it appears and when it clears, not on every repetition."""

    RECENT = 4
    """Messages of a problem remembered while it lasts: one of them coming again is not logged again. A problem
    whose tries fail in turns (Redis refusing connections at `maxclients`: redis-py says "max number of clients
    reached", then "Connection lost" at the next try) was logged at every try, ten lines a second."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.active: dict[str, str] = {}
        self._said: dict[str, list[str]] = {}

    def problem(self, key: str, message: str) -> None:
        if self.active.get(key) == message:
            return
        self.active[key] = message
        said = self._said.setdefault(key, [])
        if message in said:
            return
        said[:] = [*said[-(self.RECENT - 1):], message]
        self.log.warning("%s: %s", key, message)

    def begin(self, key: str, message: str) -> None:
        """Logs `message` when `key` is not a problem already, whatever it said then: for a message with a
        detail that varies while the problem lasts (an example, how far a clock is off), which `problem`
        would log every time."""
        if key not in self.active:
            self.problem(key, message)

    def clear(self, key: str) -> None:
        self._said.pop(key, None)
        if self.active.pop(key, None) is not None:
            self.log.info("%s: recovered", key)


def _when(handler: logging.Handler, record: logging.LogRecord) -> str:
    return (handler.formatter or logging.Formatter()).formatTime(record)

"""Logging from syslod.cfg, the same for every program: a rotating file under $FEPROOT/<dir> and stderr.

`OnceLogger` logs an error once per error state (when it starts and when it ends), not once per poll,
so a dead device does not flood the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from fepha.config import ConfigError, LogConfig, feproot

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
            handlers.append(logging.handlers.RotatingFileHandler(d / f"{program}.log", maxBytes=cfg.max_bytes,
                                                                 backupCount=cfg.backups))
        except OSError as exc:
            raise ConfigError(f"{what}: cannot write {d / f'{program}.log'}: {exc.strerror or exc}") from None
    if (cfg.console if console is None else console) or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=cfg.level, format=FORMAT, handlers=handlers, force=True)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class OnceLogger:
    """Logs a problem when it appears and when it clears, not on every repetition."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.active: dict[str, str] = {}

    def problem(self, key: str, message: str) -> None:
        if self.active.get(key) != message:
            self.active[key] = message
            self.log.warning("%s: %s", key, message)

    def clear(self, key: str) -> None:
        if self.active.pop(key, None) is not None:
            self.log.info("%s: recovered", key)

"""The log directory's disk full (a real 64 KiB tmpfs): the program goes on logging to stderr, says once
that its file cannot be written and once that it can again, instead of logging's traceback per record."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fepha.config import LogConfig
from fepha.logsetup import setup
from tests.prereq import require


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    require(None if os.geteuid() == 0 else "mounting a tmpfs needs root", "the full-disk test")
    d = tmp_path / "disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], check=True)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield d
    finally:
        try:
            for h in root.handlers:
                if h not in saved[0]:
                    with contextlib.suppress(OSError):  # its last flush, on the full disk
                        h.close()
            root.handlers[:], root.level = saved
        finally:
            subprocess.run(["umount", str(d)], check=True)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_log_disk_costs_two_lines_on_stderr_not_a_traceback_per_record(tiny_disk: Path, capfd) -> None:
    setup("svc", LogConfig(dir=str(tiny_disk / "log"), level="INFO", max_bytes=1 << 20, backups=2, console=True))
    log = logging.getLogger("svc")
    log.warning("before")
    fill(tiny_disk / "fill")
    for i in range(50):
        log.warning("while full %d %s", i, "y" * 200)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err[:3000]
    assert err.count("cannot write") == 1 and "No space left on device" in err, err[:3000]
    assert err.count("while full") == 50  # stderr has every record
    (tiny_disk / "fill").unlink()
    log.warning("after")
    err = capfd.readouterr().err
    m = re.search(r"can be written again; (\d+) records failed", err)
    assert m and 1 <= int(m.group(1)) <= 50, err  # the file's last page took the first few
    for h in logging.getLogger().handlers:
        h.flush()
    text = (tiny_disk / "log" / "svc.log").read_text(errors="replace")
    assert "before" in text and "after" in text and "can be written again" in text


def test_log_times_are_utc_with_their_zone_whatever_the_process_time_zone(tmp_path: Path, capfd,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A container runs in UTC, its host often not: each line says UTC (Z), in the file and on stderr."""
    import calendar
    import time
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")   # UTC+14: a local time would be another calendar day
    time.tzset()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup("svc", LogConfig(dir=str(tmp_path / "log"), level="INFO", max_bytes=1 << 20, backups=1, console=True))
        before = time.time()
        logging.getLogger("svc").warning("a line")
        for h in root.handlers:
            h.flush()
        lines = [capfd.readouterr().err.strip(), (tmp_path / "log" / "svc.log").read_text().strip()]
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:], root.level = saved
        monkeypatch.delenv("TZ")
        time.tzset()
    for line in lines:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{3}Z WARNING svc: a line$", line)
        assert m, line
        assert abs(calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%S")) - before) < 3, line


def test_a_problem_whose_message_alternates_is_logged_once_per_message(caplog) -> None:
    """Redis refusing connections at `maxclients`: each try of a loop fails with "max number of clients
    reached", the next with "Connection lost", in turns (measured on fep-forwarder: 28 lines in 8 s, ten a
    second at times). Each message is logged once while the problem lasts, and again after it cleared."""
    from fepha.logsetup import OnceLogger

    once = OnceLogger(logging.getLogger("t"))
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(10):
            once.problem("links", "max number of clients reached")
            once.problem("links", "Error UNKNOWN while writing to socket. Connection lost.")
        once.problem("links", "Connection refused")  # a new reason: said
        once.clear("links")
        once.problem("links", "max number of clients reached")  # a new episode: said again
    assert [r.getMessage() for r in caplog.records] == [
        "links: max number of clients reached", "links: Error UNKNOWN while writing to socket. Connection lost.",
        "links: Connection refused", "links: recovered", "links: max number of clients reached"]

"""Reading and building SEMODEL.db files.

`read_rows` turns a file into ``{table: [row, ...]}`` or a list of problems (missing file, not SQLite,
missing table or column) that `sysload check` prints like any other rule; it never raises for a bad file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fepha.semodel.model import SCHEMA_SQL, TABLES, Row
from fepha.semodel.validate import NotUtf8, Problem

# Columns added to the schema after databases were made without them, each meaning its default when NULL: a
# database without one reads as NULL there (a configuration made before T004_RTU.INFLIGHT keeps working).
ADDED_COLUMNS: frozenset[tuple[str, str]] = frozenset({("T004_RTU", "INFLIGHT")})


def schema_columns() -> dict[str, list[str]]:
    """Columns of each table as the schema defines them (read from the DDL, not written twice)."""
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(SCHEMA_SQL)
        return {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    finally:
        con.close()


def read_rows(path: Path) -> tuple[dict[str, list[Row]], list[Problem]]:
    if not path.exists():
        link = " (a symbolic link to a missing file, or a loop)" if path.is_symlink() else ""
        return {}, [Problem("-", "-", "-", f"{path}: no such file{link}")]
    if path.is_dir():
        return {}, [Problem("-", "-", "-", f"{path}: is a directory, not a SQLite database")]
    if path.is_fifo():  # open() would wait for a writer for ever: sysload hung
        return {}, [Problem("-", "-", "-", f"{path}: is a named pipe (FIFO), not a SQLite database")]
    try:
        with open(path, "rb") as fh:
            header = fh.read(16)
    except OSError as exc:  # no permission, a socket or a device where the file should be
        return {}, [Problem("-", "-", "-", f"{path}: cannot read: {exc.strerror or exc}")]
    if header != b"SQLite format 3\x00":
        return {}, [Problem("-", "-", "-", f"{path}: not a SQLite database")]
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return {}, [Problem("-", "-", "-", f"{path}: cannot open: {exc}")]
    problems: list[Problem] = []
    rows: dict[str, list[Row]] = {}
    try:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, columns in schema_columns().items():
            if table not in present:
                problems.append(Problem(table, "-", "-", "table is missing"))
                continue
            have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in columns if c not in have and (table, c) not in ADDED_COLUMNS]
            for c in missing:
                problems.append(Problem(table, "-", c, "column is missing"))
            if missing:
                continue
            null = [c for c in columns if c not in have]  # added columns: NULL
            columns = [c for c in columns if c in have]
            select = f"SELECT {', '.join(columns)} FROM {table}"
            try:
                rows[table] = [dict(zip(columns, r, strict=False)) | dict.fromkeys(null)
                               for r in con.execute(select)]
            except sqlite3.OperationalError as exc:
                if "decode" not in str(exc):
                    raise
                # text that is not UTF-8: read the table again keeping such cells as NotUtf8, which the
                # validator reports at their row and column (the default decoder stops at the first one)
                con.text_factory = _text
                rows[table] = [dict(zip(columns, r, strict=False)) | dict.fromkeys(null)
                               for r in con.execute(select)]
                con.text_factory = str
    except sqlite3.DatabaseError as exc:
        journal = path.with_name(path.name + "-journal")
        if "readonly" in str(exc) and journal.exists():  # rolling a hot journal back needs a write, and we only read
            problems.append(Problem("-", "-", "-", f"{path}: a program stopped in the middle of writing it: "
                                    f"{journal.name} holds its unfinished change; open the database once with "
                                    "sqlite3 (that rolls the change back), then run sysload again"))
        else:
            problems.append(Problem("-", "-", "-", f"{path}: unreadable SQLite database: {exc}"))
    finally:
        con.close()
    return rows, problems


def _text(b: bytes) -> str | NotUtf8:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return NotUtf8(b)


def build(sql_path: Path, db_path: Path) -> None:
    """Create `db_path` anew from the schema and the data statements in `sql_path`. Raises OSError,
    sqlite3.Error, or ValueError for SQL text that cannot be run (not UTF-8, a NUL character); `db_path` is
    then left as it was."""
    if sql_path.is_fifo():  # reading one waits for a writer
        raise ValueError("is a named pipe (FIFO), not a file")
    data = sql_path.read_bytes()
    try:
        sql = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (save the file as UTF-8)") from None
    if "\x00" in sql:  # sqlite3 refuses it with "embedded null character", naming no line
        raise ValueError(f"line {sql[:sql.index(chr(0))].count(chr(10)) + 1}: a NUL character (U+0000)")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_suffix(db_path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.executescript(SCHEMA_SQL)
        con.executescript(sql)
        con.commit()
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)  # a half-built database is left nowhere
        raise
    con.close()
    tmp.replace(db_path)


def write_rows(db_path: Path, rows: dict[str, list[Row]]) -> None:
    """Create a SEMODEL.db from rows (tests and the benchmark generate configurations this way)."""
    db_path.unlink(missing_ok=True)
    con = sqlite3.connect(db_path)
    try:
        con.executescript(SCHEMA_SQL)
        cols = schema_columns()
        for table, trows in rows.items():
            names = cols[table]
            con.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [tuple(r.get(c) for c in names) for r in trows],
            )
        con.commit()
    finally:
        con.close()

"""DuckDB connections for row logic: the same session settings wherever it runs."""
from __future__ import annotations

import duckdb


def connect(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose time zone (its cursors' too: GLOBAL) is UTC.
    DuckDB otherwise takes the machine's zone, and row logic over TIMESTAMPTZ
    (`hour(t)`, `CAST(t AS DATE)`, text without an offset cast to TIMESTAMPTZ)
    then gave the engine (online) other values than a training set (offline),
    and one machine other values than the next."""
    con = duckdb.connect(database)
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    return con

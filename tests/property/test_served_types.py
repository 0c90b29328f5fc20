"""The conversions through which the engine reads DECIMAL and time columns,
against DuckDB's own, which the training sets use (`fsapp.offline.pit`):
`decimal_as_double` must give CAST(x AS DOUBLE) bit for bit (Arrow's cast is
an ulp off for about one value in ten), and `time_as_us` must give
`pit.epoch_us_sql` for every time type."""
from __future__ import annotations

import decimal

import duckdb
import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from fsapp.engine.runtime import decimal_as_double, time_as_us
from fsapp.offline.pit import epoch_us_sql


@st.composite
def decimal_columns(draw):
    precision = draw(st.integers(1, 38))
    scale = draw(st.integers(0, precision))
    top = 10 ** precision - 1
    unscaled = draw(st.lists(st.one_of(st.none(), st.integers(-top, top),
                                       st.sampled_from([top, -top, 0, 2 ** 53, 2 ** 53 + 1, -(2 ** 63)]).filter(
                                           lambda u: abs(u) <= top)), min_size=1, max_size=40))
    wide = decimal.Context(prec=80)  # the default context would round 38 digits to 28
    values = [None if u is None else decimal.Decimal(u).scaleb(-scale, context=wide) for u in unscaled]
    cut = draw(st.integers(0, len(values)))
    typ = pa.decimal128(precision, scale)
    chunks = [pa.array(values[:cut], typ), pa.array([None] + values[cut:], typ).slice(1)]
    return pa.chunked_array(chunks, typ)


def _duckdb(col: pa.ChunkedArray, select: str) -> list:
    con = duckdb.connect()
    con.register("t", pa.table({"x": col}))
    return [r[0] for r in con.execute(f"SELECT {select} FROM t").fetchall()]


@given(decimal_columns())
def test_decimals_convert_to_duckdbs_doubles(col):
    want = [np.nan if v is None else v for v in _duckdb(col, "CAST(x AS DOUBLE)")]
    got = decimal_as_double(col)
    assert got.tolist() == want or np.array_equal(got, np.array(want, dtype=np.float64), equal_nan=True)


TIME_TYPES = {"TIMESTAMP_S": pa.timestamp("s"), "TIMESTAMP_MS": pa.timestamp("ms"), "TIMESTAMP": pa.timestamp("us"),
              "TIMESTAMP_NS": pa.timestamp("ns"), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
              "DATE": pa.date32()}


# µs within ±9e15 (1685-2255): DuckDB refuses epoch_us of a TIMESTAMP_S outside the ns range
@given(st.sampled_from(sorted(TIME_TYPES)), st.lists(st.one_of(st.none(), st.integers(-9 * 10 ** 15, 9 * 10 ** 15)),
                                                     min_size=1, max_size=30))
def test_times_convert_to_duckdbs_epoch_microseconds(typ, raw):
    t = TIME_TYPES[typ]
    if typ == "DATE":
        raw = [None if v is None else v // 86_400_000_000 for v in raw]  # days within DuckDB's range
    elif t.unit in ("s", "ms"):
        step = 1_000_000 if t.unit == "s" else 1_000
        raw = [None if v is None else v // step for v in raw]
    elif t.unit == "ns":
        raw = [None if v is None else v * 1000 + v % 997 for v in raw]  # sub-µs parts
    col = pa.chunked_array([pa.array(raw, pa.int64() if typ != "DATE" else pa.int32()).cast(t)])
    want = _duckdb(col, epoch_us_sql("x", typ))
    got = time_as_us(col)
    assert [None if w is None else g for g, w in zip(got.tolist(), want)] == want
    assert all(g == 0 for g, w in zip(got.tolist(), want) if w is None)

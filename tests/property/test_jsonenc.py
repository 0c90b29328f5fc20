"""fscore.jsonenc (the online response's JSON, written from numpy arrays in C)
against its pure-Python twin fscore.jsonenc_ref and against `json` itself:
the same bytes for every column kind, null pattern, status and timestamp."""
import json
import math
import struct

import numpy as np
from hypothesis import example, given, settings, strategies as st

from fscore import jsonenc, jsonenc_ref
from fscore.schema import Schema
from fscore.table import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, Table

US_MIN = -62135596800000000 - 10 * 86400000000  # a little before 0001-01-01
US_MAX = 253402300800000000 + 10 * 86400000000  # a little after 9999-12-31

doubles = st.floats(allow_nan=True, allow_infinity=True)
# every double by its bits: subnormals, huge and tiny exponents, both zeros
double_bits = st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0])
short_decimals = st.builds(lambda i, d: round(i / 10**d, d), st.integers(-10**12, 10**12), st.integers(0, 8))


def encode_one(x: float) -> str:
    out = jsonenc.feature_results([np.array([x])], [np.zeros(1, bool)], np.ones(1, np.uint8), np.zeros(1, np.int64))
    return json.loads(out[0])["values"][0], out[0].split(b"[", 1)[1].split(b"]", 1)[0].decode()


@settings(max_examples=3000)
@given(st.one_of(doubles, double_bits, short_decimals))
@example(0.1)
@example(-0.0)
@example(1.5)
@example(2.5)
@example(1e-4)
@example(9.999999999999999e-05)
@example(2.0**49)
@example(2.0**49 - 2**-4)
@example(2.0**48 + 0.5)
@example(0.30000000000000004)
@example(5e-324)
@example(3957582610818.84375)
@example(13963348918246.6875)
def test_floats_are_written_as_python_repr(x):
    value, text = encode_one(x)
    if math.isfinite(x):
        assert text == repr(x)
        assert value == x
    else:
        assert text == "null"


def test_statuses_match_the_table():
    assert (jsonenc.STATUS_NAMES[NOT_FOUND], jsonenc.STATUS_NAMES[PRESENT],
            jsonenc.STATUS_NAMES[OUTSIDE_MAX_AGE]) == ("NOT_FOUND", "PRESENT", "OUTSIDE_MAX_AGE")
    assert jsonenc.STATUS_NAMES == jsonenc_ref.STATUS_NAMES


@st.composite
def lookups(draw):
    n = draw(st.integers(0, 6))
    status = np.array(draw(st.lists(st.sampled_from([NOT_FOUND, PRESENT, OUTSIDE_MAX_AGE]), min_size=n, max_size=n)),
                      dtype=np.uint8)
    ts = np.array(draw(st.lists(st.integers(US_MIN, US_MAX), min_size=n, max_size=n)), dtype=np.int64)
    values, nulls, kinds = [], [], []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["int64", "float64", "bool", "string", "vector", "vector64", "list", "count"]))
        if kind in ("int64", "count"):
            a = np.array(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)), dtype=np.int64)
        elif kind == "float64":
            a = np.array(draw(st.lists(st.one_of(doubles, short_decimals), min_size=n, max_size=n)), dtype=np.float64)
        elif kind == "bool":
            a = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        elif kind == "string":
            a = np.empty(n, dtype=object)
            a[:] = draw(st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=n, max_size=n))
        else:
            size = draw(st.integers(1, 3))
            a = np.array(draw(st.lists(st.floats(width=32), min_size=n * size, max_size=n * size)),
                         dtype=np.float32).reshape(n, size)
        if kind in ("vector64", "list"):
            size = draw(st.integers(1, 3))
            rows = draw(st.lists(st.lists(st.one_of(doubles, short_decimals), max_size=size), min_size=n, max_size=n))
            a = np.array([r + [np.nan] * (size - len(r)) for r in rows], dtype=np.float64).reshape(n, size)
        values.append(a)
        kinds.append(kind)
        nulls.append(np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool))
    return values, nulls, status, ts, kinds


CODES = {"vector64": jsonenc.KINDS["vector64"], "count": jsonenc.COUNT}


@settings(max_examples=400)
@given(lookups())
def test_results_equal_the_reference(lookup):
    values, nulls, status, ts, kinds = lookup
    ref_kinds = [k if k in CODES else None for k in kinds]
    codes = [CODES.get(k, -1) for k in kinds]
    got = jsonenc.feature_results(values, nulls, status, ts, kinds=codes)
    assert got == jsonenc_ref.feature_results(values, nulls, status, ts, kinds=ref_kinds)
    assert jsonenc.feature_results(values, nulls, status, ts, objects=True, kinds=codes) == [json.loads(t) for t in got]


def test_timestamps_outside_four_digit_years_use_numpy_spelling():
    ts = np.array([US_MIN, -1, 0, US_MAX], dtype=np.int64)
    args = ([np.zeros(4)], [np.zeros(4, bool)], np.ones(4, np.uint8), ts)
    assert jsonenc.feature_results(*args) == jsonenc_ref.feature_results(*args)


def test_bad_input_is_refused():
    import pytest
    with pytest.raises(ValueError):
        jsonenc.feature_results([np.zeros(2)], [np.zeros(3, bool)], np.ones(2, np.uint8), np.zeros(2, np.int64))
    with pytest.raises(TypeError):
        jsonenc.feature_results([np.zeros(2, np.complex128)], [np.zeros(2, bool)], np.ones(2, np.uint8),
                                np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        jsonenc.feature_results([], [], np.full(1, 7, np.uint8), np.zeros(1, np.int64))


ALL_KINDS = Schema([("k", "string", 12)],
                   [("i", "int64"), ("f", "float64"), ("b", "bool"), ("s", "string", 16), ("v", "vector", 3),
                    ("w", "vector64", 2), ("l", "list", 3)])
KEYS = st.text(alphabet="abcé", max_size=4)


@settings(max_examples=150)
@given(st.lists(st.tuples(KEYS, st.integers(-2**63, 2**63 - 1), st.one_of(doubles, short_decimals),
                          st.booleans(), st.text(max_size=3), st.lists(st.floats(width=32), min_size=3, max_size=3),
                          st.lists(doubles, min_size=2, max_size=2), st.lists(doubles.filter(lambda x: x == x), max_size=3),
                          st.integers(0, 127), st.integers(0, 2000)), max_size=12),
       st.lists(KEYS, max_size=8), st.integers(0, 2500))
def test_row_images_encode_like_the_batch_arrays(rows, extra_keys, now):
    """Table.get_rows + row_results == Table.get_batch + feature_results:
    the row layout (offsets, null flags, string and vector encodings) is
    read the same way as the table decodes it."""
    t = Table(ALL_KINDS, capacity=64, ttl_us=1000)
    for key, i, f, b, s, v, w, lst, null_bits, ts in rows:
        nulls = {c: np.array([bool(null_bits >> j & 1)]) for j, c in enumerate("ifbsvwl")}
        t.put_batch(np.array([key], dtype=object),
                    {"i": np.array([i]), "f": np.array([f]), "b": np.array([b]),
                     "s": np.array([s], dtype=object), "v": np.array([v], dtype=np.float32),
                     "w": np.array([w], dtype=np.float64),
                     "l": np.array([lst + [np.nan] * (3 - len(lst))], dtype=np.float64)},
                    np.array([ts]), now=ts, nulls=nulls)
    keys = np.array([r[0] for r in rows] + extra_keys, dtype=object)
    names = ["i", "f", "b", "s", "v", "w", "l"]
    status, event_ts, images = t.get_rows(keys, now)
    specs = jsonenc.column_specs(t.column_layout(), names)
    got = jsonenc.row_results(images, status, event_ts, specs)
    assert jsonenc.row_results(images, status, event_ts, specs, joined=True) == b",".join(got)
    assert jsonenc.row_results(images, status, event_ts, specs, objects=True) == [json.loads(t) for t in got]
    r = t.get_batch(keys, now)
    assert (status == r.status).all() and (event_ts == r.event_ts).all()
    kinds = [jsonenc.KINDS[k] for k in ("int64", "float64", "bool", "string", "vector", "vector64", "list")]
    assert got == jsonenc.feature_results([r.values[c] for c in names], [r.nulls[c] for c in names], r.status,
                                          r.event_ts, kinds=kinds)
    # a count column reads 0 where the row has no value (a key with no events)
    counts = jsonenc.row_results(images, status, event_ts, jsonenc.column_specs(t.column_layout(), ["i"], {"i"}))
    assert json.loads(counts[0])["values"] == [0 if x is None else x for x in json.loads(got[0])["values"]]


def test_row_columns_that_do_not_fit_are_refused():
    import pytest
    t = Table(ALL_KINDS, capacity=4)
    status, ts, images = t.get_rows(np.array(["a"], dtype=object), 0)
    stride = images.shape[1]
    for spec in ([[jsonenc.KINDS["int64"], stride - 4, 8, 0]], [[jsonenc.KINDS["float64"], 0, 4, 0]],
                 [[99, 0, 8, 0]], [[jsonenc.KINDS["bool"], 0, 1, stride]]):
        with pytest.raises(ValueError):
            jsonenc.row_results(images, status, ts, np.array(spec, dtype=np.int64))

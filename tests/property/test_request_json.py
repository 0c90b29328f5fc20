"""fsapp.api.requests reads request bodies through the C JSON scanner alone
when it can; whatever the body, it must answer as `json.loads` does: the
same object, or an error."""
import json

from hypothesis import example, given, strategies as st

from fsapp.api import requests as rq

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=12)


def _outcome(f, body):
    try:
        return "ok", f(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return "error", type(e).__name__


@given(values, st.sampled_from(["", " ", "\n", "\ufeff", "\t\r\n"]), st.sampled_from(["", " ", "\n", "x", "}", "\x00"]),
       st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
@example({"features": ["a:b"], "entities": {"k": [1]}}, "", "", "utf-8")
def test_bodies_read_as_json_loads_reads_them(doc, before, after, encoding):
    body = (before + json.dumps(doc, ensure_ascii=False) + after).encode(encoding)
    assert repr(_outcome(rq._loads, body)) == repr(_outcome(json.loads, body))  # repr: NaN != NaN


@given(st.binary(max_size=64))
@example(b'{"a": 1} {"b": 2}')
@example(b'{"a": NaN}')
@example(b"\xff{}")
def test_arbitrary_bytes_read_as_json_loads_reads_them(body):
    assert repr(_outcome(rq._loads, body)) == repr(_outcome(json.loads, body))  # repr: NaN != NaN

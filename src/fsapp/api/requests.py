"""Reading and checking request bodies: the size limit, content types, JSON,
and the small field validators every resource shares. Each check fails with
a message that says what to send instead."""
from __future__ import annotations

import datetime as dt
import json
import math

import falcon

from fsapp.api import errors
from fsapp.sdk.convert import relative_us

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# times the API takes: years 0001..9999 (what ISO-8601 and every reader can spell), in µs
TIME_MIN_US = -62135596800 * 1_000_000
TIME_MAX_US = 253402300799999999
_CHUNK = 1 << 16


def media_type(req: falcon.Request) -> str | None:
    """The Content-Type without parameters (`; charset=utf-8`), lower case."""
    if not req.content_type:
        return None
    return req.content_type.split(";", 1)[0].strip().lower()


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes. A declared Content-Length over
    the limit was already refused by the middleware before any read; a body
    without one (chunked) is read in pieces and refused as soon as it passes
    the limit, so a client cannot make us buffer an unbounded stream."""
    length = req.content_length
    if length is not None:
        if length > limit:
            raise errors.too_large(limit, length)
        return req.bounded_stream.read(length) if length else b""
    if "chunked" not in (req.get_header("Transfer-Encoding") or "").lower():
        return b""
    # Falcon's bounded_stream reads 0 bytes without a Content-Length; the WSGI
    # server's input stream decodes the chunks.
    parts, total = [], 0
    while True:
        piece = req.stream.read(_CHUNK)
        if not piece:
            return b"".join(parts)
        total += len(piece)
        if total > limit:
            raise errors.too_large(limit)
        parts.append(piece)


def require_media(req: falcon.Request, accepted: tuple[str, ...]) -> str:
    """The request's media type if it is one of `accepted`; a missing type is
    taken as the first (JSON) so plain `curl --data-binary` works."""
    got = media_type(req)
    if got is None:
        return accepted[0]
    if got not in accepted:
        raise errors.unsupported_media(req.content_type, list(accepted))
    return got


_scan = json.JSONDecoder().scan_once


def _loads(body: bytes):
    """`json.loads(body)` for a UTF-8 body without leading or trailing junk,
    through the C scanner alone. PERF: `loads` also runs encoding
    detection and two regex whitespace matches; out of cache (a worker
    between requests) they cost ~40 µs of a 1x50 request
    (benches/bench_serving.py). Anything else goes to `json.loads`, which
    gives the error message."""
    try:
        text = body.decode()
        doc, end = _scan(text, 0)
        if end == len(text):
            return doc
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
        pass
    return json.loads(body)


def parse_json(body: bytes) -> dict:
    """The body as a JSON object."""
    if not body:
        raise errors.malformed("the body is empty; send a JSON object")
    try:
        doc = _loads(body)
    except UnicodeDecodeError:
        raise errors.malformed("the body is not UTF-8 text; send a JSON object") from None
    except ValueError as e:
        raise errors.malformed(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise errors.malformed("the JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise errors.schema_mismatch(f"the body must be a JSON object, not {_kind(doc)}")
    if b"\\u" in body and _lone_surrogate(doc):
        raise errors.malformed("the body holds a \\u escape of a lone surrogate (e.g. \\ud800), which is not "
                               "Unicode text; send valid UTF-16 pairs or plain UTF-8")
    return doc


def _lone_surrogate(doc) -> bool:
    """Whether any key or string in the document holds a lone surrogate (JSON
    allows the escape; no Unicode text holds one). Only walked when the body
    has a \\u escape at all."""
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def json_body(req: falcon.Request, limit: int) -> dict:
    require_media(req, (JSON,))
    return parse_json(read_body(req, limit))


def _kind(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(v), type(v).__name__)


# ---- field validators

def only_fields(doc: dict, allowed: set[str], where: str) -> None:
    """Unknown fields are refused, so a typo ("row" for "rows") is an error
    rather than a silently empty request."""
    extra = sorted(set(doc) - allowed)
    if extra:
        raise errors.schema_mismatch(f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                                     f"the fields are {', '.join(sorted(allowed))}")


def string(doc: dict, name: str, *, required: bool = True) -> str | None:
    v = doc.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise errors.schema_mismatch(f"{name!r} must be a non-empty string, not {_kind(v)}")
    return v


def boolean(doc: dict, name: str, default: bool = False) -> bool:
    v = doc.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise errors.schema_mismatch(f"{name!r} must be true or false, not {_kind(v)}")
    return v


def string_list(doc: dict, name: str, *, required: bool = True, example: str = "user_txn:txn_count_1h") -> list[str] | None:
    v = doc.get(name)
    if v is None and not required:
        return None
    # PERF: C-level checks (map/set) instead of a generator per item (benches/bench_serving.py)
    if not isinstance(v, list) or not set(map(type, v)) <= {str} or "" in v:
        raise errors.schema_mismatch(f"{name!r} must be an array of non-empty strings, e.g. [\"{example}\"]")
    return v


def _scalar_ok(v) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return True
    if isinstance(v, int):
        return INT64_MIN <= v <= INT64_MAX
    if isinstance(v, float):
        return math.isfinite(v)
    return False


def columns(doc, name: str, *, nonempty: bool = True) -> dict[str, list]:
    """An object of equal-length arrays of scalars (int64-range integers,
    finite numbers, strings, booleans, null)."""
    if not isinstance(doc, dict) or (nonempty and not doc):
        raise errors.schema_mismatch(f"{name!r} must be an object of columns, e.g. {{\"user_id\": [1, 2]}}")
    lengths = {}
    for k, vals in doc.items():
        if not k:
            raise errors.schema_mismatch(f"{name!r}: column names must be non-empty")
        if not isinstance(vals, list):
            raise errors.schema_mismatch(f"{name!r}: column {k!r} must be an array, not {_kind(vals)}")
        types = set(map(type, vals))
        if types == {int}:  # PERF: the common key columns, checked without a call per value
            ok = not vals or (INT64_MIN <= min(vals) and max(vals) <= INT64_MAX)
        else:
            ok = types <= {str} or all(map(_scalar_ok, vals))
        if not ok:
            bad = next(v for v in vals if not _scalar_ok(v))
            raise errors.schema_mismatch(f"{name!r}: column {k!r} holds {bad!r}; values must be strings, "
                                         "booleans, null, finite numbers or 64-bit integers")
        lengths[k] = len(vals)
    if len(set(lengths.values())) > 1:
        raise errors.schema_mismatch(f"{name!r}: columns have different lengths {lengths}; give every "
                                     "column one value per row")
    return doc


def rows(doc, name: str) -> list[dict]:
    """An array of objects of scalars."""
    if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
        raise errors.schema_mismatch(f"{name!r} must be an array of objects, e.g. "
                                     "[{\"user_id\": 1, \"amount\": 9.5, \"ts\": \"2026-11-27T10:00:00Z\"}]")
    for i, r in enumerate(doc):
        bad = next(((k, v) for k, v in r.items() if not _scalar_ok(v)), None)
        if bad is not None:
            raise errors.schema_mismatch(f"{name!r}: row {i}, field {bad[0]!r} holds {bad[1]!r}; values must be "
                                         "strings, booleans, null, finite numbers or 64-bit integers")
    return doc


def time_us(v, name: str, *, relative: bool = False) -> int:
    """ISO-8601 text (no offset means UTC) or an epoch number whose magnitude
    gives the unit, as pushes read timestamps: |x| < 1e11 seconds, < 1e14
    milliseconds, otherwise microseconds. `relative`: also 'now', 'now-2h',
    '-30m' (a request's as_of, start, end), as the CLI and SDK take them."""
    if isinstance(v, bool) or v is None:
        raise errors.schema_mismatch(f"{name!r} must be ISO-8601 text or an epoch number, not {_kind(v)}")
    if relative and isinstance(v, str):
        try:
            us = relative_us(v, repr(name))
        except ValueError as e:
            raise errors.schema_mismatch(str(e)) from None
        if us is not None:
            if not TIME_MIN_US <= us <= TIME_MAX_US:
                raise errors.schema_mismatch(f"{name!r} = {v!r} is outside years 0001..9999")
            return us
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise errors.schema_mismatch(f"{name!r} must be a finite epoch number")
        mag = abs(v)
        us = v * 1_000_000 if mag < 1e11 else v * 1_000 if mag < 1e14 else v
        us = int(round(us))
        if not TIME_MIN_US <= us <= TIME_MAX_US:
            raise errors.schema_mismatch(f"{name!r} = {v!r} is outside years 0001..9999 (read as "
                                         f"{'seconds' if mag < 1e11 else 'milliseconds' if mag < 1e14 else 'µs'} "
                                         "since the epoch by its magnitude)")
        return us
    if isinstance(v, str):
        try:
            d = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            raise errors.schema_mismatch(f"{name!r}: {v!r} is not ISO-8601 (e.g. 2026-11-27T10:00:00Z) "
                                         f"or an epoch number{', now or now-2h' if relative else ''}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        delta = d - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise errors.schema_mismatch(f"{name!r} must be ISO-8601 text or an epoch number, not {_kind(v)}")


def int_param(req: falcon.Request, name: str) -> int | None:
    raw = req.get_param(name)
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        v = 0
    if v < 1 or v > INT64_MAX:
        raise errors.malformed(f"query parameter {name}={raw!r} must be a positive integer")
    return v

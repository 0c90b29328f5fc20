# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Flat JSON objects → typed columns, a whole Kafka poll batch in one C pass
(fsapp.engine.kafka_decode's fast path; docs/kafka.md "Batch decoding").

`decode(values, names, kinds)` reads each value (bytes) as one JSON object
and fills, per declared field, an int64 / float64 / bool column or UTF-8
text (offsets + bytes) with a validity mask; fields not declared are
skipped (their JSON checked). It answers only what it is sure Arrow's JSON
reader with the same explicit schema answers: anything outside that subset
— a value that is not one object on one line, a declared field of another
JSON type than its column (an integer column given 1.5, text given 7), an
integer past 64 bits, a float that is not finite, a key with escapes, a
field given twice, a lone UTF-16 surrogate, invalid UTF-8, nesting past
64 levels — makes it return None, and the caller takes the batch the slower
way (Arrow's reader, then message by message), whose rules decide. The
equivalence is a property test (tests/property/test_kafka_decode.py).

`scan(msgs)` is the one pass over confluent-kafka Message objects the
ingest needs: values, partitions, offsets, the indices of errors (and
topics when asked).
"""
import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from libc.stdint cimport int64_t, uint64_t, int32_t, uint8_t
from libc.stdlib cimport strtod, realloc, free
from libc.string cimport memcmp, memcpy, memchr
from libc.math cimport isfinite

cnp.import_array()

# column kinds (the stream's declared types as JSON spells them)
KIND_INT, KIND_FLOAT, KIND_BOOL, KIND_TEXT = 0, 1, 2, 3

cdef enum:
    K_INT = 0
    K_FLOAT = 1
    K_BOOL = 2
    K_TEXT = 3
    MAX_DEPTH = 64
    MAX_FIELDS = 64

cdef struct Text:   # a growing UTF-8 buffer (one per text column)
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef inline bint _is_ws(char c) noexcept nogil:
    return c == c' ' or c == c'\t' or c == c'\r'


cdef inline const char* _ws(const char* p, const char* end) noexcept nogil:
    while p < end and _is_ws(p[0]):
        p += 1
    return p


cdef int _text_put(Text* t, const char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t cap
    cdef char* grown
    if t.len + n > t.cap:
        cap = t.cap * 2 if t.cap else 4096
        while cap < t.len + n:
            cap *= 2
        grown = <char*>realloc(t.data, cap)
        if grown == NULL:
            return -1
        t.data, t.cap = grown, cap
    memcpy(t.data + t.len, s, n)
    t.len += n
    return 0


cdef inline int _hex4(const char* p, const char* end, uint64_t* out) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    cdef char c
    if end - p < 4:
        return -1
    for i in range(4):
        c = p[i]
        v <<= 4
        if c'0' <= c <= c'9':
            v |= <uint64_t>(c - c'0')
        elif c'a' <= c <= c'f':
            v |= <uint64_t>(c - c'a' + 10)
        elif c'A' <= c <= c'F':
            v |= <uint64_t>(c - c'A' + 10)
        else:
            return -1
    out[0] = v
    return 0


cdef inline int _utf8_len(const unsigned char* p, const unsigned char* end) noexcept nogil:
    """Bytes of the valid UTF-8 sequence at p (a lead byte >= 0x80), or -1."""
    cdef unsigned char c = p[0]
    cdef int n, i
    cdef uint64_t cp
    if 0xC2 <= c <= 0xDF:
        n, cp = 2, c & 0x1F
    elif 0xE0 <= c <= 0xEF:
        n, cp = 3, c & 0x0F
    elif 0xF0 <= c <= 0xF4:
        n, cp = 4, c & 0x07
    else:
        return -1
    if end - p < n:
        return -1
    for i in range(1, n):
        if (p[i] & 0xC0) != 0x80:
            return -1
        cp = (cp << 6) | (p[i] & 0x3F)
    if (n == 3 and (cp < 0x800 or 0xD800 <= cp <= 0xDFFF)) or (n == 4 and (cp < 0x10000 or cp > 0x10FFFF)):
        return -1
    return n


cdef const char* _string(const char* p, const char* end, Text* out) noexcept nogil:
    """p after the opening quote; checks the string (and appends its UTF-8
    to `out` unless NULL); returns the position after the closing quote, or
    NULL when it is outside the subset."""
    cdef const char* run = p
    cdef unsigned char c
    cdef uint64_t u, lo
    cdef char enc[4]
    cdef int n
    while p < end:
        c = <unsigned char>p[0]
        if c == c'"':
            if out != NULL and _text_put(out, run, p - run) < 0:
                return NULL
            return p + 1
        if c < 0x20:
            return NULL
        if c >= 0x80:
            n = _utf8_len(<const unsigned char*>p, <const unsigned char*>end)
            if n < 0:
                return NULL
            p += n
            continue
        if c != c'\\':
            p += 1
            continue
        if out != NULL and _text_put(out, run, p - run) < 0:
            return NULL
        if end - p < 2:
            return NULL
        c = <unsigned char>p[1]
        p += 2
        if c == c'"' or c == c'\\' or c == c'/':
            enc[0] = <char>c
            n = 1
        elif c == c'b':
            enc[0], n = c'\b', 1
        elif c == c'f':
            enc[0], n = c'\f', 1
        elif c == c'n':
            enc[0], n = c'\n', 1
        elif c == c'r':
            enc[0], n = c'\r', 1
        elif c == c't':
            enc[0], n = c'\t', 1
        elif c == c'u':
            if _hex4(p, end, &u) < 0:
                return NULL
            p += 4
            if 0xDC00 <= u <= 0xDFFF:
                return NULL  # a lone low surrogate
            if 0xD800 <= u <= 0xDBFF:
                if end - p < 6 or p[0] != c'\\' or p[1] != c'u' or _hex4(p + 2, end, &lo) < 0 \
                        or not (0xDC00 <= lo <= 0xDFFF):
                    return NULL  # a lone high surrogate
                p += 6
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
            if u < 0x80:
                enc[0], n = <char>u, 1
            elif u < 0x800:
                enc[0], enc[1], n = <char>(0xC0 | (u >> 6)), <char>(0x80 | (u & 0x3F)), 2
            elif u < 0x10000:
                enc[0] = <char>(0xE0 | (u >> 12))
                enc[1] = <char>(0x80 | ((u >> 6) & 0x3F))
                enc[2] = <char>(0x80 | (u & 0x3F))
                n = 3
            else:
                enc[0] = <char>(0xF0 | (u >> 18))
                enc[1] = <char>(0x80 | ((u >> 12) & 0x3F))
                enc[2] = <char>(0x80 | ((u >> 6) & 0x3F))
                enc[3] = <char>(0x80 | (u & 0x3F))
                n = 4
        else:
            return NULL
        if out != NULL and _text_put(out, enc, n) < 0:
            return NULL
        run = p
    return NULL


cdef const char* _number(const char* p, const char* end, bint* is_int) noexcept nogil:
    """A JSON number at p (grammar only); returns its end or NULL."""
    cdef const char* q = p
    is_int[0] = True
    if q < end and q[0] == c'-':
        q += 1
    if q >= end:
        return NULL
    if q[0] == c'0':
        q += 1
    elif c'1' <= q[0] <= c'9':
        while q < end and c'0' <= q[0] <= c'9':
            q += 1
    else:
        return NULL
    if q < end and q[0] == c'.':
        is_int[0] = False
        q += 1
        if q >= end or not (c'0' <= q[0] <= c'9'):
            return NULL
        while q < end and c'0' <= q[0] <= c'9':
            q += 1
    if q < end and (q[0] == c'e' or q[0] == c'E'):
        is_int[0] = False
        q += 1
        if q < end and (q[0] == c'+' or q[0] == c'-'):
            q += 1
        if q >= end or not (c'0' <= q[0] <= c'9'):
            return NULL
        while q < end and c'0' <= q[0] <= c'9':
            q += 1
    return q


cdef const char* _skip(const char* p, const char* end, int depth) noexcept nogil:
    """Checks and skips any JSON value at p (after whitespace); NULL when
    it is outside the subset."""
    cdef bint is_int
    p = _ws(p, end)
    if p >= end or depth > MAX_DEPTH:
        return NULL
    if p[0] == c'"':
        return _string(p + 1, end, NULL)
    if p[0] == c'{' or p[0] == c'[':
        return _container(p, end, depth + 1)
    if end - p >= 4 and memcmp(p, b"true", 4) == 0:
        return p + 4
    if end - p >= 5 and memcmp(p, b"false", 5) == 0:
        return p + 5
    if end - p >= 4 and memcmp(p, b"null", 4) == 0:
        return p + 4
    return _finite(p, _number(p, end, &is_int))


cdef const char* _finite(const char* p, const char* q) noexcept nogil:
    """q (the end of the number at p), or NULL when it is not a finite
    double (Arrow's reader refuses 1e400 even in a field it ignores)."""
    cdef double d
    return q if q != NULL and _to_double(p, q, &d) else NULL


cdef double _POW10[23]
for _i in range(23):
    _POW10[_i] = float(10 ** _i)  # 1e0 .. 1e22: exact doubles


cdef inline const char* _mantissa(const char* r, const char* q, uint64_t* m, int* digits,
                                  int* read) noexcept nogil:
    """Accumulates the decimal digits at r into m, counting the significant
    ones in digits and all in read; stops past 19 significant digits (the
    caller then takes strtod). Returns where it stopped."""
    while r < q and c'0' <= r[0] <= c'9':
        if m[0] or r[0] != c'0':
            digits[0] += 1
        m[0] = m[0] * 10 + <uint64_t>(r[0] - c'0')
        read[0] += 1
        r += 1
        if digits[0] > 19:
            break
    return r


cdef bint _to_double(const char* p, const char* q, double* out) noexcept nogil:
    """The number text [p, q) (a valid JSON number) as a double, correctly
    rounded; False when it is 400 characters or more, or not finite.
    PERF: Clinger's fast path first — at most 2^53 as an integer of its
    digits, and a power of ten within 10^±22: both exact doubles, so one
    multiplication or division rounds the exact value correctly (~10 ns);
    else strtod (~60 ns here; a 20,000-message batch has a number or two a
    message)."""
    cdef char buf[400]
    cdef const char* r = p
    cdef bint neg = False, eneg = False
    cdef uint64_t m = 0
    cdef int digits = 0, whole = 0, frac = 0, e = 0, edigits = 0
    cdef double d
    if r < q and r[0] == c'-':
        neg = True
        r += 1
    r = _mantissa(r, q, &m, &digits, &whole)
    if digits <= 19 and r < q and r[0] == c'.':
        r = _mantissa(r + 1, q, &m, &digits, &frac)
    if digits <= 19 and r < q and (r[0] == c'e' or r[0] == c'E'):
        r += 1
        if r < q and (r[0] == c'+' or r[0] == c'-'):
            eneg = r[0] == c'-'
            r += 1
        while r < q and c'0' <= r[0] <= c'9' and edigits < 4:
            e = e * 10 + (r[0] - c'0')
            edigits += 1
            r += 1
    if r == q and digits <= 19 and m <= (<uint64_t>1 << 53):
        e = (-e if eneg else e) - frac
        if -22 <= e <= 22:
            d = <double>m
            d = d / _POW10[-e] if e < 0 else d * _POW10[e]
            out[0] = -d if neg else d
            return True
    if q - p >= 400:
        return False
    memcpy(buf, p, q - p)
    buf[q - p] = 0
    out[0] = strtod(buf, NULL)
    return isfinite(out[0])


cdef const char* _container(const char* p, const char* end, int depth) noexcept nogil:
    cdef bint obj = p[0] == c'{'
    cdef char close = c'}' if obj else c']'
    p = _ws(p + 1, end)
    if p < end and p[0] == close:
        return p + 1
    while True:
        if obj:
            p = _ws(p, end)
            if p >= end or p[0] != c'"':
                return NULL
            p = _string(p + 1, end, NULL)
            if p == NULL:
                return NULL
            p = _ws(p, end)
            if p >= end or p[0] != c':':
                return NULL
            p += 1
        p = _skip(p, end, depth)
        if p == NULL:
            return NULL
        p = _ws(p, end)
        if p >= end:
            return NULL
        if p[0] == close:
            return p + 1
        if p[0] != c',':
            return NULL
        p += 1


cdef inline bint _delim(const char* p, const char* end) noexcept nogil:
    return p >= end or _is_ws(p[0]) or p[0] == c',' or p[0] == c'}'


def decode(list values, list names, list kinds):
    """`values`: message values (bytes); `names` (bytes) and `kinds`
    (KIND_*): the columns. Returns None, or per column (values array, valid
    bool array) — text columns' values are (int32 offsets[n + 1], bytes)."""
    cdef Py_ssize_t n = len(values), i
    ptrs = np.empty(n, dtype=np.intp)
    lens = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] pv = ptrs
    cdef Py_ssize_t[::1] lv = lens
    for i in range(n):
        v = values[i]
        if not PyBytes_Check(v):
            return None
        pv[i] = <Py_ssize_t>PyBytes_AS_STRING(v)
        lv[i] = PyBytes_GET_SIZE(v)
    return _decode(n, pv, lv, names, kinds)


def decode_packed(cnp.ndarray data, cnp.ndarray starts, list names, list kinds):
    """`decode` of values laid back to back: value i is
    data[starts[i]:starts[i + 1]] (`data` uint8, `starts` int64, n + 1 of
    them; fscore.kafkafetch.Packed). No value may be None (a tombstone)."""
    cdef Py_ssize_t n = len(starts) - 1
    if n < 0 or data.dtype != np.uint8 or starts.dtype != np.int64 or not data.flags.c_contiguous:
        raise ValueError("decode_packed: uint8 data and int64 starts, n + 1 of them")
    lens = (starts[1:] - starts[:n]).astype(np.intp)
    if n and (starts[0] < 0 or starts[n] > len(data) or (lens < 0).any()):
        raise ValueError("decode_packed: starts out of the data")
    ptrs = (starts[:n] + <Py_ssize_t>cnp.PyArray_DATA(data)).astype(np.intp)
    return _decode(n, ptrs, lens, names, kinds)


cdef object _decode(Py_ssize_t n, Py_ssize_t[::1] pv, Py_ssize_t[::1] lv, list names, list kinds):
    cdef Py_ssize_t ncol = len(names), i, c, j, klen
    if ncol > MAX_FIELDS:
        return None
    cdef const char* name_p[MAX_FIELDS]
    cdef Py_ssize_t name_n[MAX_FIELDS]
    cdef int kind[MAX_FIELDS]
    cdef int64_t* ip[MAX_FIELDS]
    cdef double* fp[MAX_FIELDS]
    cdef uint8_t* bp[MAX_FIELDS]
    cdef int32_t* op[MAX_FIELDS]
    cdef uint8_t* vp[MAX_FIELDS]
    cdef Text texts[MAX_FIELDS]
    cdef uint64_t seen
    out, valid = [], []
    for c in range(ncol):
        name_p[c] = PyBytes_AS_STRING(names[c])
        name_n[c] = PyBytes_GET_SIZE(names[c])
        kind[c] = kinds[c]
        texts[c].data, texts[c].len, texts[c].cap = NULL, 0, 0
        v = np.zeros(n, dtype=np.bool_)
        valid.append(v)
        vp[c] = <uint8_t*>cnp.PyArray_DATA(v)
        if kind[c] == K_INT:
            a = np.zeros(n, dtype=np.int64)
            ip[c] = <int64_t*>cnp.PyArray_DATA(a)
        elif kind[c] == K_FLOAT:
            a = np.zeros(n, dtype=np.float64)
            fp[c] = <double*>cnp.PyArray_DATA(a)
        elif kind[c] == K_BOOL:
            a = np.zeros(n, dtype=np.bool_)
            bp[c] = <uint8_t*>cnp.PyArray_DATA(a)
        else:
            a = np.zeros(n + 1, dtype=np.int32)
            op[c] = <int32_t*>cnp.PyArray_DATA(a)
        out.append(a)
    cdef bint ok = True, is_int
    cdef const char* p
    cdef const char* end
    cdef const char* key
    cdef const char* tok
    cdef uint64_t u
    cdef bint neg
    cdef double d
    try:
        with nogil:
            for i in range(n):
                p = <const char*>pv[i]
                end = p + lv[i]
                if memchr(p, c'\n', lv[i]) != NULL:
                    ok = False  # one line per message (Arrow's reader reads lines)
                    break
                p = _ws(p, end)
                if p >= end or p[0] != c'{':
                    ok = False
                    break
                p = _ws(p + 1, end)
                seen = 0
                if p < end and p[0] == c'}':
                    p += 1
                else:
                    while True:
                        if p >= end or p[0] != c'"':
                            ok = False
                            break
                        key = p + 1
                        tok = <const char*>memchr(key, c'"', end - key)
                        if tok == NULL or memchr(key, c'\\', tok - key) != NULL:
                            ok = False  # (escaped keys: the slow way)
                            break
                        klen = tok - key
                        p = _ws(tok + 1, end)
                        if p >= end or p[0] != c':':
                            ok = False
                            break
                        p = _ws(p + 1, end)
                        c = -1
                        for j in range(ncol):
                            if name_n[j] == klen and memcmp(name_p[j], key, klen) == 0:
                                c = j
                                break
                        if c < 0:
                            # a key with bytes >= 0x80 must still be valid UTF-8
                            if _string(key, tok + 1, NULL) == NULL:
                                ok = False
                                break
                            p = _skip(p, end, 1)
                        elif seen & (<uint64_t>1 << c):
                            ok = False  # a field given twice
                            break
                        else:
                            seen |= <uint64_t>1 << c
                            if p >= end:
                                ok = False
                                break
                            if end - p >= 4 and memcmp(p, b"null", 4) == 0:
                                p += 4
                                if kind[c] == K_TEXT:
                                    op[c][i + 1] = <int32_t>texts[c].len
                            elif kind[c] == K_TEXT:
                                if p[0] != c'"':
                                    ok = False
                                    break
                                p = _string(p + 1, end, &texts[c])
                                if p == NULL or texts[c].len > 0x7FFFFFFF:
                                    ok = False
                                    break
                                op[c][i + 1] = <int32_t>texts[c].len
                                vp[c][i] = 1
                            elif kind[c] == K_BOOL:
                                if end - p >= 4 and memcmp(p, b"true", 4) == 0:
                                    bp[c][i] = 1
                                    p += 4
                                elif end - p >= 5 and memcmp(p, b"false", 5) == 0:
                                    p += 5
                                else:
                                    ok = False
                                    break
                                vp[c][i] = 1
                            else:
                                tok = p
                                p = _number(p, end, &is_int)
                                if p == NULL or not _delim(p, end):
                                    ok = False
                                    break
                                if kind[c] == K_INT:
                                    if not is_int:
                                        ok = False
                                        break
                                    neg = tok[0] == c'-'
                                    if neg:
                                        tok += 1
                                    if p - tok > 19:  # (19 digits fit uint64)
                                        ok = False
                                        break
                                    u = 0
                                    while tok < p:
                                        u = u * 10 + <uint64_t>(tok[0] - c'0')
                                        tok += 1
                                    # past int64 (-2^63 reads): the slow way
                                    if u > (<uint64_t>1 << 63) - (0 if neg else 1):
                                        ok = False
                                        break
                                    ip[c][i] = <int64_t>(0 - u) if neg else <int64_t>u
                                else:
                                    # (a declared number of 63 characters or more: the slow way)
                                    if p - tok >= 63 or not _to_double(tok, p, &d):
                                        ok = False
                                        break
                                    fp[c][i] = d
                                vp[c][i] = 1
                        if p == NULL:
                            ok = False
                            break
                        p = _ws(p, end)
                        if p >= end:
                            ok = False
                            break
                        if p[0] == c'}':
                            p += 1
                            break
                        if p[0] != c',':
                            ok = False
                            break
                        p = _ws(p + 1, end)
                    if not ok:
                        break
                if _ws(p, end) != end:
                    ok = False  # something after the object
                    break
                for c in range(ncol):
                    if kind[c] == K_TEXT and not (seen & (<uint64_t>1 << c)):
                        op[c][i + 1] = <int32_t>texts[c].len
        if not ok:
            return None
        for c in range(ncol):
            if kind[c] == K_TEXT:
                out[c] = (out[c], texts[c].data[:texts[c].len] if texts[c].len else b"")
        return list(zip(out, valid))
    finally:
        for c in range(ncol):
            free(texts[c].data)


def scan(list msgs, bint topics=False):
    """One pass over confluent-kafka Message objects: (values, partitions
    int64, offsets int64, indices of the messages that are errors, each
    message's topic when `topics` else None). An error's value is None, its
    partition and offset -1."""
    cdef Py_ssize_t n = len(msgs), i
    parts = np.empty(n, dtype=np.int64)
    offs = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] pv = parts
    cdef int64_t[::1] ov = offs
    values = [None] * n
    names = [None] * n if topics else None
    errors = []
    if n == 0:
        return values, parts, offs, errors, names
    # PERF: the type's method descriptors, called with the message: no
    # attribute lookup and bound method per call (4 calls a message)
    cls = type(msgs[0])
    error_of, value_of, partition_of, offset_of = cls.error, cls.value, cls.partition, cls.offset
    topic_of = cls.topic if topics else None
    for i in range(n):
        m = msgs[i]
        if type(m) is not cls:
            cls = type(m)
            error_of, value_of, partition_of, offset_of = cls.error, cls.value, cls.partition, cls.offset
            topic_of = cls.topic if topics else None
        if error_of(m) is not None:
            errors.append(i)
            pv[i] = -1
            ov[i] = -1
            continue
        values[i] = value_of(m)
        pv[i] = partition_of(m)
        ov[i] = offset_of(m)
        if topics:
            names[i] = topic_of(m)
    return values, parts, offs, errors, names

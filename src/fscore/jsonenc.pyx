# cython: language_level=3
"""JSON text of a batch lookup's columns, in Feast's column-major online
response shape: one object per feature

    {"values":[...],"statuses":["PRESENT",...],"event_timestamps":["2026-11-27T10:00:00.000000Z",...]}

written straight from the numpy arrays of a `BatchResult` in one call per
feature view. PERF: building Python lists per feature and per cell and then
encoding them with `json` was ~95% of a 1 entity x 50 feature request
(benches/bench_serving.py).

The text is byte-for-byte what `json.dumps(..., separators=(",", ":"))`
(ensure_ascii, allow_nan=False) gives for the same values, with the rules of
the pure-Python twin `fscore.jsonenc_ref` (the test oracle):
- a value is null where the row's null flag is set or a float is NaN or
  infinite (inside a vector: that element is null; a list (last_k) holds its
  items up to the first NaN, the unused tail);
- a count column (`COUNT`: count, approx_count_distinct) reads 0 where the
  row has no value (a key with no events: its windows are empty);
- a row's status is its lookup status (NOT_FOUND, PRESENT, OUTSIDE_MAX_AGE),
  except NULL_VALUE for a PRESENT row whose null flag is set;
- event timestamps are UTC ISO-8601 with microseconds and a `Z`.
"""
import json

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, strlen
from libc.math cimport isfinite

from fscore.table cimport Table

cnp.import_array()

cdef extern from "shortfloat.h":
    int fs_shortfloat(double x, char* out) noexcept nogil
    int FS_SHORTFLOAT_MAX

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype) except NULL
    void PyMem_Free(void *p)
    int Py_DTSF_ADD_DOT_0

# the status codes of fscore.table (ST_NOT_FOUND = 0, ST_PRESENT = 1, ST_OUTSIDE_MAX_AGE = 2) and NULL_VALUE
STATUS_NAMES = ("NOT_FOUND", "PRESENT", "OUTSIDE_MAX_AGE", "NULL_VALUE")
cdef const char* _STATUS_JSON[4]
_STATUS_JSON[0] = b'"NOT_FOUND"'
_STATUS_JSON[1] = b'"PRESENT"'
_STATUS_JSON[2] = b'"OUTSIDE_MAX_AGE"'
_STATUS_JSON[3] = b'"NULL_VALUE"'
cdef enum:
    ST_PRESENT = 1
    ST_NULL_VALUE = 3

cdef object _encode_string = json.encoder.encode_basestring_ascii


cdef struct Buf:
    char* data
    Py_ssize_t n
    Py_ssize_t cap


cdef int _reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    if b.n + extra <= b.cap:
        return 0
    cap = max(b.cap * 2, b.n + extra, 256)
    p = <char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const char* s, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.n, s, n)
    b.n += n
    return 0


cdef inline int _puts(Buf* b, const char* s) except -1:
    return _put(b, s, strlen(s))


cdef int _put_double(Buf* b, double x) except -1:
    """Python's repr(float): the shortest text that reads back as x."""
    cdef char* s
    cdef int n
    if not isfinite(x):
        return _put(b, b"null", 4)
    _reserve(b, FS_SHORTFLOAT_MAX)
    n = fs_shortfloat(x, b.data + b.n)
    if n >= 0:
        b.n += n
        return 0
    s = PyOS_double_to_string(x, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        _puts(b, s)
    finally:
        PyMem_Free(s)
    return 0


cdef int _put_int(Buf* b, int64_t x) except -1:
    cdef char digits[24]
    cdef int nd = 0, i
    cdef uint64_t u = <uint64_t>x
    if x < 0:
        u = (~u) + 1  # |x|, also for INT64_MIN
    while True:
        digits[nd] = <char>(48 + u % 10)
        nd += 1
        u //= 10
        if u == 0:
            break
    _reserve(b, nd + 1)
    if x < 0:
        b.data[b.n] = 45  # '-'
        b.n += 1
    for i in range(nd - 1, -1, -1):
        b.data[b.n] = digits[i]
        b.n += 1
    return 0


cdef inline void _put_digits(char* p, int64_t v, int width) noexcept:
    """v (>= 0) as exactly `width` decimal digits, zero-padded."""
    cdef int i
    for i in range(width - 1, -1, -1):
        p[i] = <char>(48 + v % 10)
        v //= 10


cdef int _put_str(Buf* b, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    if not isinstance(s, str):
        raise TypeError(f"string column holds {type(s).__name__}, not str")
    text = _encode_string(s)  # ASCII with the quotes, as json.dumps writes it
    p = PyUnicode_AsUTF8AndSize(text, &n)
    return _put(b, p, n)


cdef inline int64_t _floordiv(int64_t a, int64_t b) noexcept:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef int _put_iso(Buf* b, int64_t us) except -1:
    """`np.datetime_as_string(us as datetime64[us], unit="us") + "Z"`, quoted."""
    cdef int64_t days = _floordiv(us, 86400000000)
    cdef int64_t rem = us - days * 86400000000
    cdef int64_t secs = rem // 1000000, micros = rem % 1000000
    # civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    cdef int64_t z = days + 719468
    cdef int64_t era = _floordiv(z, 146097)
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t d = doy - (153 * mp + 2) // 5 + 1
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    if y < 1 or y > 9999:  # numpy's own spelling outside four-digit years
        text = np.datetime_as_string(np.array([us], dtype="datetime64[us]"), unit="us")[0]
        return _put_str(b, text + "Z")
    # "YYYY-MM-DDTHH:MM:SS.ffffffZ" with the quotes: 29 bytes
    _reserve(b, 29)
    cdef char* p = b.data + b.n
    memcpy(p, b'"0000-00-00T00:00:00.000000Z"', 29)
    _put_digits(p + 1, y, 4)
    _put_digits(p + 6, m, 2)
    _put_digits(p + 9, d, 2)
    _put_digits(p + 12, secs // 3600, 2)
    _put_digits(p + 15, (secs // 60) % 60, 2)
    _put_digits(p + 18, secs % 60, 2)
    _put_digits(p + 21, micros, 6)
    b.n += 29
    return 0


cdef inline cnp.ndarray _contiguous(object a, int typenum):
    """`a` itself when it already is a C-contiguous array of numpy type
    `typenum` (-1: any; the usual case: fresh lookup arrays), else a
    contiguous copy."""
    if (isinstance(a, cnp.ndarray) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and (typenum < 0 or cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum)):
        return <cnp.ndarray>a
    return np.ascontiguousarray(a, dtype=None if typenum < 0 else cnp.PyArray_DescrFromType(typenum))


# a column to write: row i's value at data + i * stride, its null flag at
# null + i * null_stride
cdef enum:
    C_INT64, C_FLOAT64, C_BOOL, C_VECTOR, C_STR_OBJECT, C_STR_BYTES, C_VECTOR64, C_LIST, C_COUNT

KINDS = {"int64": C_INT64, "float64": C_FLOAT64, "bool": C_BOOL, "vector": C_VECTOR, "string": C_STR_BYTES,
         "vector64": C_VECTOR64, "list": C_LIST}
# an int64 column whose missing values read 0 (counts of empty windows)
COUNT = C_COUNT

cdef struct Col:
    int kind
    const uint8_t* data
    Py_ssize_t stride
    Py_ssize_t width     # vector, vector64, list: items per value; string bytes: the most UTF-8 bytes
    const uint8_t* null
    Py_ssize_t null_stride
    PyObject* objects    # C_STR_OBJECT: the object array


cdef int _put_column(Buf* b, Col* c, Py_ssize_t n) except -1:
    cdef Py_ssize_t i, j
    cdef const uint8_t* v
    cdef double x
    cdef float f
    cdef int64_t q
    _put(b, b"[", 1)
    if c.kind == C_FLOAT64:
        # PERF: room for every value up front: one allocation, not a doubling series
        _reserve(b, n * (FS_SHORTFLOAT_MAX + 1))
    for i in range(n):
        if i:
            _put(b, b",", 1)
        if c.null[i * c.null_stride]:
            if c.kind == C_COUNT:
                _put(b, b"0", 1)
            else:
                _put(b, b"null", 4)
            continue
        v = c.data + i * c.stride
        if c.kind == C_FLOAT64:
            memcpy(&x, v, 8)
            _put_double(b, x)
        elif c.kind == C_INT64 or c.kind == C_COUNT:
            memcpy(&q, v, 8)
            _put_int(b, q)
        elif c.kind == C_BOOL:
            if v[0]:
                _put(b, b"true", 4)
            else:
                _put(b, b"false", 5)
        elif c.kind == C_VECTOR64 or c.kind == C_LIST:
            _put(b, b"[", 1)
            for j in range(c.width):
                memcpy(&x, v + 8 * j, 8)
                if c.kind == C_LIST and x != x:
                    break
                if j:
                    _put(b, b",", 1)
                _put_double(b, x)
            _put(b, b"]", 1)
        elif c.kind == C_VECTOR:
            _put(b, b"[", 1)
            for j in range(c.width):
                if j:
                    _put(b, b",", 1)
                memcpy(&f, v + 4 * j, 4)
                _put_double(b, f)
            _put(b, b"]", 1)
        elif c.kind == C_STR_BYTES:
            _put_str(b, _stored_str(c, v))
        else:
            item = (<object>c.objects)[i]
            if item is None:
                _put(b, b"null", 4)
            else:
                _put_str(b, item)
    _put(b, b"]", 1)
    return 0


cdef str _stored_str(Col* c, const uint8_t* v):
    """A string as a table row stores it: 2-byte big-endian length, UTF-8."""
    cdef Py_ssize_t L = (v[0] << 8) | v[1]
    if L > c.width:
        raise ValueError(f"a stored string says {L} bytes; its column holds at most {c.width}")
    return (<const char*>v + 2)[:L].decode("utf-8")


cdef int _array_col(Col* c, cnp.ndarray a, cnp.ndarray null, Py_ssize_t n, int kind) except -1:
    """A column of `feature_results`: an array (contiguous) and its null
    flags; `kind` a KINDS code (or COUNT) where the array alone is ambiguous
    (a float64 matrix is a vector64 or a list), else -1."""
    cdef int typenum = cnp.PyArray_TYPE(a)
    if a.ndim == 0 or a.shape[0] != n:
        raise ValueError(f"a column has {a.shape[0] if a.ndim else 0} rows, the lookup has {n}")
    c.data = <const uint8_t*>cnp.PyArray_DATA(a)
    c.null = <const uint8_t*>cnp.PyArray_DATA(null)
    c.null_stride = 1
    c.width = 0
    c.objects = NULL
    if a.ndim == 2:
        if typenum == cnp.NPY_FLOAT32:
            c.kind = C_VECTOR
            c.stride = 4 * a.shape[1]
        elif typenum == cnp.NPY_FLOAT64:
            c.kind = C_VECTOR64 if kind == C_VECTOR64 else C_LIST
            c.stride = 8 * a.shape[1]
        else:
            raise TypeError(f"vector and list columns are float32 or float64, got {a.dtype}")
        c.width = a.shape[1]
    elif a.ndim != 1:
        raise TypeError(f"cannot encode a {a.ndim}-d column as JSON")
    elif typenum == cnp.NPY_FLOAT64:
        c.kind, c.stride = C_FLOAT64, 8
    elif typenum == cnp.NPY_INT64:
        c.kind, c.stride = (C_COUNT if kind == C_COUNT else C_INT64), 8
    elif typenum == cnp.NPY_BOOL:
        c.kind, c.stride = C_BOOL, 1
    elif typenum == cnp.NPY_OBJECT:
        c.kind, c.stride = C_STR_OBJECT, 0
        c.objects = <PyObject*>a
    else:
        raise TypeError(f"cannot encode a {a.dtype} column as JSON")
    return 0


cdef int _put_statuses(Buf* b, const uint8_t* status, Col* c, Py_ssize_t n) except -1:
    """The rows' statuses; with a column `c`, NULL_VALUE for its null PRESENT rows."""
    cdef Py_ssize_t i
    cdef uint8_t s
    _put(b, b"[", 1)
    for i in range(n):
        if i:
            _put(b, b",", 1)
        s = status[i]
        if c != NULL and s == ST_PRESENT and c.null[i * c.null_stride]:
            s = ST_NULL_VALUE
        _puts(b, _STATUS_JSON[s])
    _put(b, b"]", 1)
    return 0


cdef class _Results:
    """The parts every feature of one lookup shares, then one object per feature."""
    cdef Buf b
    cdef const uint8_t* st
    cdef Py_ssize_t n
    cdef bytes stamps, base
    cdef list stamps_list, base_list
    cdef object st_owner  # the status array `st` points into

    def __cinit__(self):
        self.b.data = NULL
        self.b.n = self.b.cap = 0

    def __dealloc__(self):
        free(self.b.data)

    cdef int start(self, cnp.ndarray st_a, cnp.ndarray ts_a, bint objects) except -1:
        """The shared parts of a lookup's status and event_ts arrays."""
        if st_a.ndim != 1 or ts_a.ndim != 1 or ts_a.shape[0] != st_a.shape[0]:
            raise ValueError("status and event_ts must be 1-d arrays of the same length")
        self.st_owner = st_a
        return self.start_ptr(<const uint8_t*>cnp.PyArray_DATA(st_a), <const int64_t*>cnp.PyArray_DATA(ts_a),
                              st_a.shape[0], objects)

    cdef int start_ptr(self, const uint8_t* st, const int64_t* ts, Py_ssize_t n, bint objects) except -1:
        """The shared parts; with `objects`, also as Python lists. `st` and
        `ts` must outlive this object's use."""
        cdef Py_ssize_t i, at
        self.n = n
        self.st = st
        for i in range(self.n):
            if self.st[i] > 2:
                raise ValueError(f"unknown lookup status {self.st[i]}")
        # `,"event_timestamps":[...]}` and the statuses of a feature without nulls
        self.b.n = 0
        _puts(&self.b, b',"event_timestamps":[')
        if objects:
            self.stamps_list = []
            self.base_list = [STATUS_NAMES[self.st[i]] for i in range(self.n)]
        for i in range(self.n):
            if i:
                _put(&self.b, b",", 1)
            at = self.b.n
            _put_iso(&self.b, ts[i])
            if objects:  # the text between the quotes
                self.stamps_list.append(self.b.data[at + 1:self.b.n - 1].decode("ascii"))
        _put(&self.b, b"]}", 2)
        self.stamps = PyBytes_FromStringAndSize(self.b.data, self.b.n)
        self.b.n = 0
        _put_statuses(&self.b, self.st, NULL, self.n)
        self.base = PyBytes_FromStringAndSize(self.b.data, self.b.n)
        return 0

    cdef bint null_present(self, Col* c) noexcept:
        """Whether the feature has a null among PRESENT rows (then its
        statuses say NULL_VALUE there instead of sharing the view's)."""
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.st[i] == ST_PRESENT and c.null[i * c.null_stride]:
                return True
        return False

    cdef bytes feature(self, Col* c):
        self.b.n = 0
        self.feature_into(c, &self.b)
        return PyBytes_FromStringAndSize(self.b.data, self.b.n)

    cdef dict feature_object(self, Col* c):
        """The feature's result as Python objects: what json.loads gives for
        `feature`, but the view's timestamp list (and status list, when the
        feature has no null among PRESENT rows) is one shared list."""
        cdef Py_ssize_t i, j
        cdef const uint8_t* v
        cdef double x
        cdef float f
        cdef int64_t q
        values = [None] * self.n
        for i in range(self.n):
            if c.null[i * c.null_stride]:
                if c.kind == C_COUNT:
                    values[i] = 0
                continue
            v = c.data + i * c.stride
            if c.kind == C_FLOAT64:
                memcpy(&x, v, 8)
                if isfinite(x):
                    values[i] = x
            elif c.kind == C_INT64 or c.kind == C_COUNT:
                memcpy(&q, v, 8)
                values[i] = q
            elif c.kind == C_BOOL:
                values[i] = v[0] != 0
            elif c.kind == C_VECTOR64 or c.kind == C_LIST:
                vec = []
                for j in range(c.width):
                    memcpy(&x, v + 8 * j, 8)
                    if c.kind == C_LIST and x != x:
                        break
                    vec.append(x if isfinite(x) else None)
                values[i] = vec
            elif c.kind == C_VECTOR:
                vec = [None] * c.width
                for j in range(c.width):
                    memcpy(&f, v + 4 * j, 4)
                    if isfinite(f):
                        vec[j] = <double>f
                values[i] = vec
            elif c.kind == C_STR_BYTES:
                values[i] = _stored_str(c, v)
            else:
                item = (<object>c.objects)[i]
                if item is not None and not isinstance(item, str):
                    raise TypeError(f"string column holds {type(item).__name__}, not str")
                values[i] = item
        if self.null_present(c):
            statuses = [STATUS_NAMES[ST_NULL_VALUE if self.st[i] == ST_PRESENT and c.null[i * c.null_stride]
                                     else self.st[i]] for i in range(self.n)]
        else:
            statuses = self.base_list
        return {"values": values, "statuses": statuses, "event_timestamps": self.stamps_list}

    cdef int feature_into(self, Col* c, Buf* b) except -1:
        """Appends the feature's object to `b`."""
        _put(b, b'{"values":', 10)
        _put_column(b, c, self.n)
        _put(b, b',"statuses":', 12)
        if self.null_present(c):
            _put_statuses(b, self.st, c, self.n)
        else:
            _put(b, <const char*>self.base, len(self.base))
        _put(b, <const char*>self.stamps, len(self.stamps))
        return 0


def feature_results(list values not None, list nulls not None, status, event_ts, bint objects=False,
                    kinds=None) -> list:
    """One view's lookup (a `BatchResult`'s arrays) → one JSON object (bytes)
    per feature.

    `values[k]` / `nulls[k]`: feature k's value array (int64, float64, bool,
    object of str, float32 n x size for vectors, float64 n x size for lists
    (vector64 where `kinds` says so)) and its null flags (bool); `kinds`:
    optional, per feature a KINDS code or COUNT (counts read 0 where null);
    `status` (uint8) and `event_ts` (int64 µs): the rows' lookup status and
    event time, shared by every feature of the view. `objects`: Python
    objects (dicts) instead of JSON text, as `json.loads` would give them."""
    cdef _Results r = _Results()
    cdef Col c
    cdef cnp.ndarray a, null
    if len(values) != len(nulls):
        raise ValueError(f"{len(values)} value columns but {len(nulls)} null columns")
    r.start(_contiguous(status, cnp.NPY_UINT8), _contiguous(event_ts, cnp.NPY_INT64), objects)
    out = []
    for k in range(len(values)):
        null = _contiguous(nulls[k], cnp.NPY_BOOL)
        if null.ndim != 1 or null.shape[0] != r.n:
            raise ValueError(f"feature {k} has {null.size} null flags, the lookup has {r.n} rows")
        a = _contiguous(values[k], -1)
        _array_col(&c, a, null, r.n, -1 if kinds is None else kinds[k])
        out.append(r.feature_object(&c) if objects else r.feature(&c))
    return out


cdef bint _column_fits(Py_ssize_t kind, Py_ssize_t off, Py_ssize_t width, Py_ssize_t noff,
                       Py_ssize_t stride) noexcept:
    if off < 0 or noff < 0 or off + width > stride or noff >= stride:
        return False
    if kind == C_INT64 or kind == C_FLOAT64 or kind == C_COUNT:
        return width == 8
    if kind == C_BOOL:
        return width == 1
    if kind == C_STR_BYTES:
        return width >= 2
    if kind == C_VECTOR:
        return width > 0 and width % 4 == 0
    if kind == C_VECTOR64 or kind == C_LIST:
        return width > 0 and width % 8 == 0
    return False


def row_results(rows, status, event_ts, columns, bint joined=False, bint objects=False):
    """The same as `feature_results`, from `Table.get_rows` row images:
    `rows` uint8 (n, stride); `columns` int64 (k, 4): for each feature its
    kind (`KINDS`), offset, width in bytes and null flag offset within a row
    (see `column_specs`). `joined`: one bytes object, the features' objects
    separated by commas, instead of a list (PERF: no object per feature when
    the response takes them in this order). `objects`: a list of Python
    objects (dicts) instead, as `json.loads` would give them."""
    cdef _Results r = _Results()
    cdef cnp.ndarray rows_a = _contiguous(rows, cnp.NPY_UINT8)
    r.start(_contiguous(status, cnp.NPY_UINT8), _contiguous(event_ts, cnp.NPY_INT64), objects)
    if rows_a.ndim != 2 or rows_a.shape[0] != r.n:
        raise ValueError(f"rows must be an (n, stride) uint8 array with n = {r.n}")
    return _rows_out(r, <const uint8_t*>cnp.PyArray_DATA(rows_a), rows_a.shape[1], columns, joined, objects)


def table_results(Table table not None, keys, int64_t now, columns, bint joined=False):
    """`row_results(rows, status, event_ts, columns, joined=joined)` of
    `status, event_ts, rows = table.get_rows(keys, now)` (JSON), without
    the arrays: the rows are read into one C buffer and
    written out from there. PERF: the arrays (keys, status, event times,
    rows) were most of a 1x50 request's lookup under load, when every numpy
    allocation path is out of cache (benches/bench_serving.py). `keys`: what
    `Table.get_rows` takes; for a table keyed by one int64 column, a list of
    ints is read as is."""
    cdef _Results r = _Results()
    cdef Py_ssize_t n, stride = table.stride
    cdef uint8_t* mem
    keys = table._key_source(keys)  # n rows, whatever form the keys came in
    n = len(keys)
    mem = <uint8_t*>PyMem_Malloc(n * (9 + stride) + 1)
    if mem == NULL:
        raise MemoryError()
    try:
        # event times first: 8-byte aligned
        table.rows_into(keys, n, now, mem + 8 * n, <int64_t*>mem, mem + 9 * n)
        r.start_ptr(mem + 8 * n, <const int64_t*>mem, n, False)
        return _rows_out(r, mem + 9 * n, stride, columns, joined, False)
    finally:
        PyMem_Free(mem)


cdef object _rows_out(_Results r, const uint8_t* rows, Py_ssize_t stride, columns, bint joined, bint objects):
    """Each feature of `columns` from the row images at `rows` (r.n rows of
    `stride` bytes), as `row_results` returns them."""
    cdef Col c
    cdef cnp.ndarray spec = _contiguous(columns, cnp.NPY_INT64)
    cdef const int64_t* sp
    cdef Py_ssize_t k, kind, off, width, noff
    cdef _Results all_holder = _Results()  # owns the joined buffer
    cdef Buf* all_ = &all_holder.b
    if spec.ndim != 2 or spec.shape[1] != 4:
        raise ValueError("columns must be a (k, 4) int64 array: kind, offset, width, null offset")
    sp = <const int64_t*>cnp.PyArray_DATA(spec)
    if joined and not objects:  # PERF: one allocation for the whole answer, not a doubling series of copies
        _reserve(all_, spec.shape[0] * (len(r.stamps) + len(r.base) + 32 + r.n * 24))
    out = []
    for k in range(spec.shape[0]):
        kind, off, width, noff = sp[4 * k], sp[4 * k + 1], sp[4 * k + 2], sp[4 * k + 3]
        if not _column_fits(kind, off, width, noff, stride):
            raise ValueError(f"column {k} ({kind}, {off}, {width}, {noff}) does not fit a {stride}-byte row")
        c.kind = <int>kind
        c.data = rows + off
        c.stride = stride
        c.width = (width // 4 if kind == C_VECTOR else width // 8 if kind == C_VECTOR64 or kind == C_LIST
                   else width - 2)
        c.null = rows + noff
        c.null_stride = stride
        c.objects = NULL
        if objects:
            out.append(r.feature_object(&c))
        elif joined:
            if k:
                _put(all_, b",", 1)
            r.feature_into(&c, all_)
        else:
            out.append(r.feature(&c))
    if joined and not objects:
        return PyBytes_FromStringAndSize(all_.data, all_.n)
    return out


def column_specs(layout, names, counts=()) -> np.ndarray:
    """`row_results`' column array for the features `names`, from
    `Table.column_layout()`; the features in `counts` (int64 columns) read 0
    where a row has no value."""
    where = {name: (C_COUNT if name in counts else KINDS[kind], off, width, noff)
             for name, kind, off, width, noff in layout}
    return np.array([where[n] for n in names], dtype=np.int64).reshape(len(names), 4)

# Encoding helpers of the online table (included by table.pyx): the key hash,
# the stable key encoding of fscore.schema in C, value decoding, and output
# array allocation. Split out so table.pyx holds only the table operations.

cdef inline object _empty(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return cnp.PyArray_EMPTY(1, dims, typenum, 0)


cdef inline object _empty2(Py_ssize_t n, Py_ssize_t m, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = n
    dims[1] = m
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef inline uint64_t _mix(uint64_t h) noexcept nogil:
    # murmur3 fmix64: full avalanche, so the low bits index and the high bits tag
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef uint64_t hash_key(const uint8_t *key, Py_ssize_t kw8) noexcept nogil:
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ <uint64_t>kw8
    cdef uint64_t w
    cdef Py_ssize_t i
    if kw8 == 8:  # PERF: the common single-int64 key, one mix, no loop
        memcpy(&w, key, 8)
        return _mix(h ^ w)
    for i in range(0, kw8, 8):
        memcpy(&w, key + i, 8)
        h = _mix(h ^ w)
    return h


cdef inline bint _key_eq(const uint8_t *a, const uint8_t *b, Py_ssize_t kw8) noexcept nogil:
    cdef uint64_t x, y
    if kw8 == 8:  # PERF: one 8-byte compare instead of a memcmp call
        memcpy(&x, a, 8)
        memcpy(&y, b, 8)
        return x == y
    return memcmp(a, b, kw8) == 0


cdef inline int64_t _load_be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef extern from *:
    """
    static inline unsigned long long fs_to_be64(unsigned long long v) {
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_bswap64(v);
    #else
        return v;
    #endif
    }
    """
    uint64_t fs_to_be64(uint64_t v) noexcept nogil


cdef inline void _store_be64(uint8_t *p, uint64_t v) noexcept nogil:
    v = fs_to_be64(v)
    memcpy(p, &v, 8)


cdef inline void _encode_int_keys(uint8_t[:, ::1] out, Py_ssize_t off, const int64_t[::1] ints) noexcept nogil:
    """An int64 key column into bytes [off, off + 8) of each encoded key:
    big-endian with the sign bit flipped (byte order = numeric order)."""
    cdef Py_ssize_t i
    for i in range(ints.shape[0]):
        _store_be64(&out[i, off], <uint64_t>ints[i] ^ 0x8000000000000000ULL)


cdef int _encode_string(object s, uint8_t *dst, Py_ssize_t size, object name, str role) except -1:
    """Writes a 2-byte big-endian length, the UTF-8 bytes and zero padding."""
    cdef Py_ssize_t n
    cdef const char *utf8
    if not isinstance(s, str):
        raise (KeyEncodingError if role == "key" else SchemaError)(
            f"{role} column {name!r} is string; got {type(s).__name__} {s!r}")
    utf8 = PyUnicode_AsUTF8AndSize(s, &n)
    if n > size:
        raise (KeyEncodingError if role == "key" else SchemaError)(
            f"{role} column {name!r}: {n} UTF-8 bytes is over its size {size}")
    dst[0] = (n >> 8) & 0xff
    dst[1] = n & 0xff
    memcpy(dst + 2, utf8, n)
    memset(dst + 2 + n, 0, size - n)
    return 0


cdef object _decode_value(uint8_t kind, const uint8_t *p, Py_ssize_t width):
    cdef Py_ssize_t n, i
    cdef double d
    cdef int64_t v
    cdef float x
    if kind == K_INT64:
        memcpy(&v, p, 8)
        return v
    if kind == K_FLOAT64:
        memcpy(&d, p, 8)
        return d
    if kind == K_BOOL:
        return p[0] != 0
    if kind == K_STRING:
        n = (p[0] << 8) | p[1]
        return (<const char *>p + 2)[:n].decode("utf-8")
    out = []
    if kind == K_VECTOR:
        for i in range(width // 4):
            memcpy(&x, p + 4 * i, 4)
            out.append(x)
        return tuple(out)
    for i in range(width // 8):  # vector64, list (whose unused tail is NaN)
        memcpy(&d, p + 8 * i, 8)
        if kind == K_LIST and d != d:
            break
        out.append(d)
    return tuple(out)


cdef object _addresses(list arrays):
    """Data addresses of contiguous arrays, for the nogil loops (the caller
    keeps the arrays alive). PERF: ndarray.ctypes costs microseconds each."""
    cdef Py_ssize_t i, n = len(arrays)
    out = np.zeros(max(n, 1), dtype=np.intp)
    cdef Py_ssize_t[::1] o = out
    cdef cnp.ndarray a
    for i in range(n):
        a = arrays[i]
        o[i] = <Py_ssize_t>cnp.PyArray_DATA(a)
    return out


def _decode_strings(o, null):
    cdef const uint8_t[:, ::1] m = o
    cdef Py_ssize_t i, n, nrows = o.shape[0]
    out = np.full(nrows, None, dtype=object)
    for i in range(nrows):
        if not null[i]:
            n = (m[i, 0] << 8) | m[i, 1]
            out[i] = (<const char *>&m[i, 2])[:n].decode("utf-8")
    return out


def _single_key_batch(schema, key):
    if len(schema.keys) == 1:
        if isinstance(key, tuple):
            key = key[0] if len(key) == 1 else key
        f = schema.keys[0]
        return np.array([key], dtype=np.int64 if f.kind == "int64" else object)
    if not isinstance(key, tuple) or len(key) != len(schema.keys):
        raise KeyEncodingError(f"key {key!r} must have {len(schema.keys)} parts: {', '.join(schema.key_names)}")
    return {f.name: np.array([v], dtype=np.int64 if f.kind == "int64" else object) for f, v in zip(schema.keys, key)}

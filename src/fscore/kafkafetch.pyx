# cython: language_level=3
"""A Kafka consumer over librdkafka's C API that hands a poll batch over as
the values, partitions and offsets `fsapp.engine.kafka` needs, without a
confluent-kafka Message object per message (issue 16: `Consumer.consume()`
spends ~0.25 µs an event building those objects under the GIL, as much as the
rest of the ingest together).

librdkafka is the one confluent-kafka loaded (found in the process's mapped
files, then `dlopen`'d: the same library, no second copy and no build-time
dependency); `load()` returns False when it cannot be found or lacks a symbol,
and the ingest keeps confluent-kafka's consume loop. Only the part of the C
API a consumer without a group subscription needs is bound (assign, seek,
batch consume, watermarks, commit); the struct layouts are librdkafka's
public, stable ones (rdkafka.h, since 1.0)."""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy
from posix.dlfcn cimport dlopen, dlsym, dlerror, RTLD_NOW

import operator
import os

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    ctypedef long ssize_t


# ---- librdkafka's public types (rdkafka.h)

ctypedef struct rd_kafka_message_t:
    int err
    void* rkt
    int32_t partition
    void* payload
    size_t len
    void* key
    size_t key_len
    int64_t offset
    void* _private

ctypedef struct rd_kafka_topic_partition_t:
    char* topic
    int32_t partition
    int64_t offset
    void* metadata
    size_t metadata_size
    void* opaque
    int err
    void* _private

ctypedef struct rd_kafka_topic_partition_list_t:
    int cnt
    int size
    rd_kafka_topic_partition_t* elems

ctypedef void* (*f_conf_new)() noexcept nogil
ctypedef int (*f_conf_set)(void*, const char*, const char*, char*, size_t) noexcept nogil
ctypedef void (*f_conf_destroy)(void*) noexcept nogil
ctypedef void* (*f_new)(int, void*, char*, size_t) noexcept nogil
ctypedef void (*f_destroy)(void*) noexcept nogil
ctypedef int (*f_rk_err)(void*) noexcept nogil
ctypedef void* (*f_queue_get)(void*) noexcept nogil
ctypedef void (*f_queue_destroy)(void*) noexcept nogil
ctypedef ssize_t (*f_consume_batch)(void*, int, rd_kafka_message_t**, size_t) noexcept nogil
ctypedef void (*f_msg_destroy)(rd_kafka_message_t*) noexcept nogil
ctypedef const char* (*f_topic_name)(const void*) noexcept nogil
ctypedef int64_t (*f_msg_ts)(const rd_kafka_message_t*, int*) noexcept nogil
ctypedef rd_kafka_topic_partition_list_t* (*f_list_new)(int) noexcept nogil
ctypedef rd_kafka_topic_partition_t* (*f_list_add)(rd_kafka_topic_partition_list_t*, const char*, int32_t) noexcept nogil
ctypedef void (*f_list_destroy)(rd_kafka_topic_partition_list_t*) noexcept nogil
ctypedef int (*f_assign)(void*, const rd_kafka_topic_partition_list_t*) noexcept nogil
ctypedef void* (*f_incr_assign)(void*, const rd_kafka_topic_partition_list_t*) noexcept nogil
ctypedef void* (*f_seek_parts)(void*, rd_kafka_topic_partition_list_t*, int) noexcept nogil
ctypedef const char* (*f_error_string)(const void*) noexcept nogil
ctypedef void (*f_error_destroy)(void*) noexcept nogil
ctypedef int (*f_get_wm)(void*, const char*, int32_t, int64_t*, int64_t*) noexcept nogil
ctypedef int (*f_query_wm)(void*, const char*, int32_t, int64_t*, int64_t*, int) noexcept nogil
ctypedef int (*f_commit)(void*, const rd_kafka_topic_partition_list_t*, int) noexcept nogil
ctypedef const char* (*f_err2str)(int) noexcept nogil
ctypedef int (*f_fatal_error)(void*, char*, size_t) noexcept nogil

cdef struct Api:
    f_conf_new conf_new
    f_conf_set conf_set
    f_conf_destroy conf_destroy
    f_new new
    f_destroy destroy
    f_rk_err poll_set_consumer
    f_rk_err consumer_close
    f_queue_get queue_get_consumer
    f_queue_destroy queue_destroy
    f_consume_batch consume_batch_queue
    f_msg_destroy message_destroy
    f_topic_name topic_name
    f_msg_ts message_timestamp
    f_list_new list_new
    f_list_add list_add
    f_list_destroy list_destroy
    f_assign assign
    f_incr_assign incremental_assign
    f_seek_parts seek_partitions
    f_error_string error_string
    f_error_destroy error_destroy
    f_get_wm get_watermark_offsets
    f_query_wm query_watermark_offsets
    f_commit commit
    f_err2str err2str
    f_fatal_error fatal_error

cdef Api api
cdef bint loaded = False
cdef object load_error = "not loaded yet"

DEF RD_KAFKA_CONSUMER = 1
DEF ERR_PARTITION_EOF = -191
DEF ERR_FATAL = -150
DEF CHUNK = 1024  # messages taken from librdkafka's queue a call


def library_path():
    """The file of the librdkafka confluent-kafka loaded, or None."""
    import confluent_kafka.cimpl  # noqa: F401 - loads it
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    path = fields[5].rstrip("\n")
                    if path.startswith("/") and "librdkafka" in os.path.basename(path):
                        return path
    except OSError:
        return None
    return None


cdef void* sym(void* h, const char* name) except NULL:
    cdef void* p = dlsym(h, name)
    if p == NULL:
        raise OSError(f"librdkafka has no {name.decode()}")
    return p


def load():
    """Binds librdkafka's C API once; True when it is usable (else `why()`
    says what failed)."""
    global loaded, load_error
    if loaded:
        return True
    path = library_path()
    if path is None:
        load_error = "confluent-kafka's librdkafka is not among the process's mapped files"
        return False
    cdef bytes bpath = path.encode()
    cdef void* h = dlopen(bpath, RTLD_NOW)
    if h == NULL:
        load_error = f"dlopen {path}: {(<bytes>dlerror()).decode(errors='replace')}"
        return False
    try:
        api.conf_new = <f_conf_new>sym(h, b"rd_kafka_conf_new")
        api.conf_set = <f_conf_set>sym(h, b"rd_kafka_conf_set")
        api.conf_destroy = <f_conf_destroy>sym(h, b"rd_kafka_conf_destroy")
        api.new = <f_new>sym(h, b"rd_kafka_new")
        api.destroy = <f_destroy>sym(h, b"rd_kafka_destroy")
        api.poll_set_consumer = <f_rk_err>sym(h, b"rd_kafka_poll_set_consumer")
        api.consumer_close = <f_rk_err>sym(h, b"rd_kafka_consumer_close")
        api.queue_get_consumer = <f_queue_get>sym(h, b"rd_kafka_queue_get_consumer")
        api.queue_destroy = <f_queue_destroy>sym(h, b"rd_kafka_queue_destroy")
        api.consume_batch_queue = <f_consume_batch>sym(h, b"rd_kafka_consume_batch_queue")
        api.message_destroy = <f_msg_destroy>sym(h, b"rd_kafka_message_destroy")
        api.topic_name = <f_topic_name>sym(h, b"rd_kafka_topic_name")
        api.message_timestamp = <f_msg_ts>sym(h, b"rd_kafka_message_timestamp")
        api.list_new = <f_list_new>sym(h, b"rd_kafka_topic_partition_list_new")
        api.list_add = <f_list_add>sym(h, b"rd_kafka_topic_partition_list_add")
        api.list_destroy = <f_list_destroy>sym(h, b"rd_kafka_topic_partition_list_destroy")
        api.assign = <f_assign>sym(h, b"rd_kafka_assign")
        api.incremental_assign = <f_incr_assign>sym(h, b"rd_kafka_incremental_assign")
        api.seek_partitions = <f_seek_parts>sym(h, b"rd_kafka_seek_partitions")
        api.error_string = <f_error_string>sym(h, b"rd_kafka_error_string")
        api.error_destroy = <f_error_destroy>sym(h, b"rd_kafka_error_destroy")
        api.get_watermark_offsets = <f_get_wm>sym(h, b"rd_kafka_get_watermark_offsets")
        api.query_watermark_offsets = <f_query_wm>sym(h, b"rd_kafka_query_watermark_offsets")
        api.commit = <f_commit>sym(h, b"rd_kafka_commit")
        api.err2str = <f_err2str>sym(h, b"rd_kafka_err2str")
        api.fatal_error = <f_fatal_error>sym(h, b"rd_kafka_fatal_error")
    except OSError as e:
        load_error = str(e)
        return False
    loaded = True
    load_error = None
    return True


def why():
    """Why `load()` returned False (None once loaded)."""
    return load_error


def check_property(str name, str value):
    """librdkafka's judgement of one configuration property, without making
    a client: None when it takes it, else its reason ("No such
    configuration property", "Invalid value ..."); None when the library
    cannot be bound (the client's creation judges then)."""
    if not loaded and not load():
        return None
    cdef char errstr[512]
    cdef void* conf = api.conf_new()
    cdef int res = api.conf_set(conf, name.encode(), value.encode(), errstr, sizeof(errstr))
    api.conf_destroy(conf)
    return None if res == 0 else errstr.decode(errors="replace")


class FetchError(Exception):
    """A librdkafka error: `code` its rd_kafka_resp_err_t, `fatal` whether
    the consumer is unusable."""

    def __init__(self, code: int, reason: str, fatal: bool = False):
        super().__init__(reason)
        self.code, self.reason, self.fatal = code, reason, fatal


cdef str err_text(int err):
    return (<bytes>api.err2str(err)).decode(errors="replace")


cdef str event_reason(const rd_kafka_message_t* m):
    """An error event's text: its payload when it has one, else its code's."""
    if m.payload != NULL and m.len:
        return PyBytes_FromStringAndSize(<char*>m.payload, m.len).decode(errors="replace")
    return err_text(m.err)


cdef raise_error(void* error, str what):
    """Raises FetchError for an rd_kafka_error_t (destroyed here); nothing for NULL."""
    if error == NULL:
        return
    reason = (<bytes>api.error_string(error)).decode(errors="replace")
    api.error_destroy(error)
    raise FetchError(-1, f"{what}: {reason}")


cdef rd_kafka_topic_partition_list_t* make_list(list tps) except NULL:
    """[(topic, partition, offset)] → a partition list (the caller destroys it)."""
    cdef rd_kafka_topic_partition_list_t* lst = api.list_new(max(len(tps), 1))
    cdef rd_kafka_topic_partition_t* tp
    for topic, partition, offset in tps:
        tp = api.list_add(lst, (<str>topic).encode(), <int32_t>partition)
        tp.offset = <int64_t>offset
    return lst


cdef class FetchedMessage:
    """A message read whole (batches that keep their messages: dead letters,
    the Kafka timestamp): the part of confluent-kafka's Message the ingest
    reads."""

    cdef readonly object _value, _key, _topic
    cdef readonly int64_t _partition, _offset, _ts
    cdef readonly int _ts_type

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return (self._ts_type, self._ts)

    def error(self):
        return None

    def headers(self):
        return None

    def __repr__(self):
        return f"FetchedMessage({self._topic}/{self._partition}@{self._offset})"



cdef struct Batch:
    # a batch read by Fetcher.read_packed, in C buffers (filled without the GIL)
    char* data
    size_t used, dcap
    int64_t* parts
    int64_t* offs
    int64_t* starts
    unsigned char* nulls
    size_t* rkts                 # each message's topic handle (NULL: not asked)
    Py_ssize_t n, cap
    rd_kafka_message_t** errs    # error events, kept until read with the GIL
    Py_ssize_t nerr, ecap


cdef int batch_init(Batch* b, Py_ssize_t cap, size_t dcap, bint topics) noexcept:
    b.used, b.n, b.nerr, b.cap, b.dcap, b.ecap = 0, 0, 0, cap, dcap, 0
    b.data = <char*>malloc(dcap)
    b.parts = <int64_t*>malloc(cap * sizeof(int64_t))
    b.offs = <int64_t*>malloc(cap * sizeof(int64_t))
    b.starts = <int64_t*>malloc((cap + 1) * sizeof(int64_t))
    b.nulls = <unsigned char*>malloc(cap)
    b.rkts = <size_t*>malloc(cap * sizeof(size_t)) if topics else NULL
    b.errs = NULL
    if (b.data == NULL or b.parts == NULL or b.offs == NULL or b.starts == NULL or b.nulls == NULL
            or (topics and b.rkts == NULL)):
        return -1
    b.starts[0] = 0
    return 0


cdef void batch_free(Batch* b) noexcept:
    free(b.data)
    free(b.parts)
    free(b.offs)
    free(b.starts)
    free(b.nulls)
    free(b.rkts)
    free(b.errs)
    b.data = b.errs = NULL
    b.parts = b.offs = b.starts = NULL
    b.nulls = NULL
    b.rkts = NULL


cdef bint grow(void** p, size_t size) noexcept nogil:
    cdef void* q = realloc(p[0], size)
    if q == NULL:
        return False
    p[0] = q
    return True


cdef int batch_room(Batch* b, Py_ssize_t more, size_t bytes_more) noexcept nogil:
    """Room for `more` messages and `bytes_more` value bytes (-1: no memory)."""
    cdef Py_ssize_t cap
    cdef size_t dcap
    if b.n + more > b.cap:
        cap = b.cap * 2 if b.cap * 2 >= b.n + more else b.n + more
        if not (grow(<void**>&b.parts, cap * sizeof(int64_t)) and grow(<void**>&b.offs, cap * sizeof(int64_t))
                and grow(<void**>&b.starts, (cap + 1) * sizeof(int64_t)) and grow(<void**>&b.nulls, cap)
                and (b.rkts == NULL or grow(<void**>&b.rkts, cap * sizeof(size_t)))):
            return -1
        b.cap = cap
    if b.used + bytes_more > b.dcap:
        dcap = b.dcap * 2 if b.dcap * 2 >= b.used + bytes_more else b.used + bytes_more
        if not grow(<void**>&b.data, dcap):
            return -1
        b.dcap = dcap
    return 0


cdef int batch_fill(Batch* b, Api* a, void* queue, rd_kafka_message_t** buf, int wait,
                    Py_ssize_t limit) noexcept nogil:
    """Waits up to `wait` ms for a first message, then takes what is
    fetched, up to `limit` messages (error events set aside in b.errs).
    Returns 0, or -1 out of memory (the messages taken are destroyed)."""
    cdef Py_ssize_t got, i, want
    cdef size_t need
    cdef rd_kafka_message_t* m
    cdef int status = 0
    while b.n < limit:
        want = 1 if wait else min(CHUNK, limit - b.n)
        got = a.consume_batch_queue(queue, wait, buf, want)
        wait = 0
        if got <= 0:
            break
        need = 0
        for i in range(got):
            need += buf[i].len
        if status == 0 and (batch_room(b, got, need) < 0 or (b.nerr + got > b.ecap and not grow_errs(b, got))):
            status = -1
        for i in range(got):
            m = buf[i]
            if status < 0:
                a.message_destroy(m)
                continue
            if m.err:
                b.errs[b.nerr] = m
                b.nerr += 1
                continue
            if m.payload != NULL:
                memcpy(b.data + b.used, m.payload, m.len)
                b.used += m.len
            b.nulls[b.n] = m.payload == NULL
            b.parts[b.n] = m.partition
            b.offs[b.n] = m.offset
            if b.rkts != NULL:
                b.rkts[b.n] = <size_t>m.rkt
            b.n += 1
            b.starts[b.n] = <int64_t>b.used
            a.message_destroy(m)
        if status < 0 or got < want:
            break
    return status


cdef bint grow_errs(Batch* b, Py_ssize_t more) noexcept nogil:
    cdef Py_ssize_t cap = b.nerr + more + 16
    if not grow(<void**>&b.errs, cap * sizeof(rd_kafka_message_t*)):
        return False
    b.ecap = cap
    return True


cdef class Packed:
    """A batch's message values back to back (`Fetcher.read_packed`): value
    i is data[starts[i]:starts[i + 1]] (bytes), or None where nulls[i] (a
    tombstone; `nulls` None when there is none). Reads as a sequence of
    bytes (len, index, iteration, `None in`), and `fscore.jsonrows`
    decodes it in place (`decode_packed`)."""

    cdef readonly cnp.ndarray data     # uint8
    cdef readonly cnp.ndarray starts   # int64, n + 1
    cdef readonly object nulls         # bool[n] or None
    cdef Py_ssize_t n

    def __init__(self, cnp.ndarray data, cnp.ndarray starts, nulls=None):
        if data.dtype != np.uint8 or starts.dtype != np.int64 or len(starts) < 1:
            raise ValueError("Packed: uint8 data and int64 starts, n + 1 of them")
        n = len(starts) - 1
        if starts[0] < 0 or starts[n] > len(data) or (starts[1:] < starts[:n]).any():
            raise ValueError("Packed: starts must rise within the data")
        if nulls is not None and len(nulls) != n:
            raise ValueError("Packed: one null flag a value")
        self.data, self.starts, self.n = np.ascontiguousarray(data), np.ascontiguousarray(starts), n
        self.nulls = nulls if nulls is not None and nulls.any() else None

    def __len__(self):
        return self.n

    cdef object item(self, Py_ssize_t i):
        if self.nulls is not None and self.nulls[i]:
            return None
        cdef int64_t a = (<int64_t*>cnp.PyArray_DATA(self.starts))[i]
        cdef int64_t b = (<int64_t*>cnp.PyArray_DATA(self.starts))[i + 1]
        return PyBytes_FromStringAndSize(<char*>cnp.PyArray_DATA(self.data) + a, b - a)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.item(j) for j in range(*i.indices(self.n))]
        cdef Py_ssize_t k = operator.index(i)
        if k < 0:
            k += self.n
        if not 0 <= k < self.n:
            raise IndexError(i)
        return self.item(k)

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            yield self.item(i)

    def __contains__(self, v):
        if v is None:
            return self.nulls is not None
        return any(x == v for x in self)

    def tolist(self):
        return [self.item(i) for i in range(self.n)]

    def take(self, idx):
        """The values at `idx` (ints), as a Packed."""
        ix = np.ascontiguousarray(idx, dtype=np.int64)
        if ix.size and (ix.min() < 0 or ix.max() >= self.n):
            raise IndexError("Packed.take: an index out of range")
        lens = (self.starts[1:] - self.starts[:self.n])[ix]
        starts = np.zeros(len(ix) + 1, dtype=np.int64)
        np.cumsum(lens, out=starts[1:])
        data = np.empty(int(starts[len(ix)]), dtype=np.uint8)
        cdef const int64_t[::1] src = self.starts
        cdef const int64_t[::1] dst = starts
        cdef const int64_t[::1] sel = ix
        cdef char* s = <char*>cnp.PyArray_DATA(self.data)
        cdef char* d = <char*>cnp.PyArray_DATA(data)
        cdef Py_ssize_t j
        for j in range(len(ix)):
            memcpy(d + dst[j], s + src[sel[j]], dst[j + 1] - dst[j])
        return Packed(data, starts, None if self.nulls is None else self.nulls[ix])

    def __repr__(self):
        return f"Packed({self.n} values, {self.starts[self.n]} bytes)"

cdef class Fetcher:
    """One librdkafka consumer without a group subscription: the partitions
    it is given (`assign`), read a batch at a time (`read`)."""

    cdef void* rk
    cdef void* queue
    cdef rd_kafka_message_t** buf
    cdef dict names  # rkt pointer → topic name (str)
    cdef bint closed

    def __cinit__(self, dict config):
        if not loaded and not load():
            raise OSError(f"librdkafka is not available: {load_error}")
        cdef char errstr[512]
        cdef void* conf = api.conf_new()
        for k, v in config.items():
            if callable(v):
                api.conf_destroy(conf)
                raise ValueError(f"{k}: callbacks are not taken by the native fetcher")
            sv = ("true" if v else "false") if isinstance(v, bool) else str(v)
            if api.conf_set(conf, str(k).encode(), sv.encode(), errstr, sizeof(errstr)) != 0:
                api.conf_destroy(conf)
                raise ValueError(f"{k}: {errstr.decode(errors='replace')}")
        self.rk = api.new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr))  # owns conf on success
        if self.rk == NULL:
            api.conf_destroy(conf)
            raise ValueError(errstr.decode(errors="replace"))
        api.poll_set_consumer(self.rk)  # errors and events come out of the consumer queue
        self.queue = api.queue_get_consumer(self.rk)
        self.buf = <rd_kafka_message_t**>malloc(CHUNK * sizeof(rd_kafka_message_t*))
        if self.buf == NULL:
            raise MemoryError()
        self.names = {}

    def __dealloc__(self):
        if self.buf != NULL:
            free(self.buf)
            self.buf = NULL
        if self.queue != NULL:
            api.queue_destroy(self.queue)
            self.queue = NULL
        if self.rk != NULL:
            if not self.closed:
                with nogil:
                    api.consumer_close(self.rk)
            with nogil:
                api.destroy(self.rk)
            self.rk = NULL

    cdef check(self):
        if self.closed or self.rk == NULL:
            raise FetchError(-172, "the fetcher is closed")  # RD_KAFKA_RESP_ERR__STATE

    def assign(self, list tps):
        """The whole assignment: [(topic, partition, offset)]."""
        self.check()
        cdef rd_kafka_topic_partition_list_t* lst = make_list(tps)
        cdef int err
        with nogil:
            err = api.assign(self.rk, lst)
        api.list_destroy(lst)
        if err:
            raise FetchError(err, f"assign: {err_text(err)}")

    def incremental_assign(self, list tps):
        """Partitions added to the assignment: [(topic, partition, offset)]."""
        self.check()
        cdef rd_kafka_topic_partition_list_t* lst = make_list(tps)
        cdef void* error
        with nogil:
            error = api.incremental_assign(self.rk, lst)
        api.list_destroy(lst)
        raise_error(error, "incremental assign")

    def seek(self, list tps, int timeout_ms=5000):
        """Moves the fetch positions of assigned partitions: [(topic,
        partition, offset)]; messages fetched before it are not returned."""
        self.check()
        cdef rd_kafka_topic_partition_list_t* lst = make_list(tps)
        cdef void* error
        with nogil:
            error = api.seek_partitions(self.rk, lst, timeout_ms)
        cdef int i
        failed = []
        for i in range(lst.cnt):
            if lst.elems[i].err:
                failed.append(f"{lst.elems[i].topic.decode()}/{lst.elems[i].partition}: "
                              f"{err_text(lst.elems[i].err)}")
        api.list_destroy(lst)
        raise_error(error, "seek")
        if failed:
            raise FetchError(-1, "seek: " + "; ".join(failed))

    def watermarks(self, str topic, int partition, bint cached=True, int timeout_ms=5000):
        """(low, high) offsets: cached from the last fetch response, or asked
        of the broker; -1 where unknown."""
        self.check()
        cdef int64_t lo = -1, hi = -1
        cdef bytes t = topic.encode()
        cdef const char* ct = t
        cdef int err
        if cached:
            err = api.get_watermark_offsets(self.rk, ct, partition, &lo, &hi)
        else:
            with nogil:
                err = api.query_watermark_offsets(self.rk, ct, partition, &lo, &hi, timeout_ms)
        if err:
            raise FetchError(err, f"watermarks of {topic}/{partition}: {err_text(err)}")
        return lo, hi

    def commit(self, list tps, bint asynchronous=True):
        """Commits [(topic, partition, offset)] for the group (monitoring)."""
        self.check()
        cdef rd_kafka_topic_partition_list_t* lst = make_list(tps)
        cdef int err, a = asynchronous
        with nogil:
            err = api.commit(self.rk, lst, a)
        api.list_destroy(lst)
        if err:
            raise FetchError(err, f"commit: {err_text(err)}")

    def close(self):
        if self.closed or self.rk == NULL:
            return
        self.closed = True
        with nogil:
            api.consumer_close(self.rk)

    def read_packed(self, int timeout_ms, Py_ssize_t limit, bint topics=False):
        """`read` without a bytes object a message: (Packed values,
        partitions int64, offsets int64, topics or None, errors). The whole
        batch is taken and its values copied back to back in one stretch
        without the GIL (one hand-back a batch, not one a chunk: a thread
        waiting for the GIL waits up to the switch interval each time)."""
        self.check()
        cdef Batch b
        cdef int status
        cdef Py_ssize_t i
        cdef Py_ssize_t cap = max(min(limit, 65536), 1)
        if batch_init(&b, cap, <size_t>cap * 128, topics) < 0:
            batch_free(&b)
            raise MemoryError()
        try:
            with nogil:
                status = batch_fill(&b, &api, self.queue, self.buf, timeout_ms, limit)
            if status < 0:
                raise MemoryError()
            errors = []
            fatal = False
            for i in range(b.nerr):
                m = b.errs[i]
                if m.err == ERR_FATAL:
                    fatal = True
                elif m.err != ERR_PARTITION_EOF:
                    errors.append((m.err, event_reason(m)))
            if fatal:
                self.raise_fatal()
            n = b.n
            data = np.empty(b.used, dtype=np.uint8)
            parts = np.empty(n, dtype=np.int64)
            offs = np.empty(n, dtype=np.int64)
            starts = np.empty(n + 1, dtype=np.int64)
            nulls = np.empty(n, dtype=np.bool_)
            memcpy(cnp.PyArray_DATA(data), b.data, b.used)
            memcpy(cnp.PyArray_DATA(parts), b.parts, n * sizeof(int64_t))
            memcpy(cnp.PyArray_DATA(offs), b.offs, n * sizeof(int64_t))
            memcpy(cnp.PyArray_DATA(starts), b.starts, (n + 1) * sizeof(int64_t))
            memcpy(cnp.PyArray_DATA(nulls), b.nulls, n)
            names = [self.name_of(<size_t>b.rkts[i]) for i in range(n)] if topics else None
        finally:
            for i in range(b.nerr):
                api.message_destroy(b.errs[i])
            batch_free(&b)
        return Packed(data, starts, nulls), parts, offs, names, errors

    cdef str name_of(self, size_t rkt):
        name = self.names.get(rkt)
        if name is None:
            name = (<bytes>api.topic_name(<void*>rkt)).decode()
            self.names[rkt] = name
        return name

    cdef raise_fatal(self):
        cdef char reason[512]
        cdef int code = api.fatal_error(self.rk, reason, sizeof(reason))
        raise FetchError(code, f"fatal: {reason.decode(errors='replace')}", True)

    def read(self, int timeout_ms, Py_ssize_t limit, bint topics=False, bint keep=False):
        """Waits up to timeout_ms for a first message, then takes what is
        already fetched, up to `limit` messages: (values, partitions int64,
        offsets int64, topics or None, messages or None, errors). `topics`:
        each message's topic too; `keep`: a FetchedMessage for each.
        `errors`: [(code, reason)] of the error events read (not fatal:
        a fatal one raises FetchError); they are not messages."""
        self.check()
        cdef list values = []
        cdef list names = [] if topics else None
        cdef list msgs = [] if keep else None
        cdef list errors = []
        cdef Py_ssize_t cap = max(min(limit, 65536), 1), n = 0, got, i, want
        parts = np.empty(cap, dtype=np.int64)
        offs = np.empty(cap, dtype=np.int64)
        cdef int64_t[::1] pv = parts
        cdef int64_t[::1] ov = offs
        cdef rd_kafka_message_t* m
        cdef int wait = timeout_ms
        cdef int tstype
        cdef FetchedMessage fm
        while n < limit:
            want = min(CHUNK, limit - n)
            if wait:
                want = 1  # the first message: wait for it, then take what is there
            with nogil:
                got = api.consume_batch_queue(self.queue, wait, self.buf, want)
            wait = 0
            if got <= 0:
                break
            if n + got > cap:
                cap = max(cap * 2, n + got)
                parts = np.resize(parts, cap)
                offs = np.resize(offs, cap)
                pv = parts
                ov = offs
            try:
                for i in range(got):
                    m = self.buf[i]
                    if m.err:
                        if m.err == ERR_FATAL:
                            self.raise_fatal()
                        if m.err != ERR_PARTITION_EOF:
                            errors.append((m.err, event_reason(m)))
                        continue
                    value = (PyBytes_FromStringAndSize(<char*>m.payload, m.len) if m.payload != NULL else None)
                    values.append(value)
                    pv[n] = m.partition
                    ov[n] = m.offset
                    n += 1
                    if topics or keep:
                        name = self.name_of(<size_t>m.rkt)
                        if topics:
                            names.append(name)
                        if keep:
                            fm = FetchedMessage.__new__(FetchedMessage)
                            fm._value = value
                            fm._key = (PyBytes_FromStringAndSize(<char*>m.key, m.key_len) if m.key != NULL
                                       else None)
                            fm._topic = name
                            fm._partition = m.partition
                            fm._offset = m.offset
                            fm._ts = api.message_timestamp(m, &tstype)
                            fm._ts_type = tstype
                            msgs.append(fm)
            finally:
                for i in range(got):
                    api.message_destroy(self.buf[i])
            if got < want:
                break
        return values, parts[:n], offs[:n], names, msgs, errors

/* Seqlock and atomics helpers shared by the online table's writer and readers.
 *
 * One writer, many readers, possibly in different processes mapping the same
 * file. A sequence word is even when the protected data is stable and odd while
 * the writer is changing it. Readers copy the data optimistically and retry if
 * the sequence changed or was odd: a reader never returns a torn row and never
 * blocks the writer.
 *
 *   writer: fs_seq_write_begin(&s); ...plain stores...; fs_seq_write_end(&s);
 *   reader: do { v = fs_seq_read_begin(&s); ...plain loads...; }
 *           while (fs_seq_read_retry(&s, v));
 *
 * The data accesses themselves are plain loads and stores; the fences order
 * them against the sequence word (the Linux kernel's seqcount pattern).
 */
#ifndef FSCORE_SEQLOCK_H
#define FSCORE_SEQLOCK_H

#include <stdint.h>

static inline void fs_seq_write_begin(int64_t *seq) {
    int64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, s + 1, __ATOMIC_RELAXED);
    /* The odd value must be visible before any data store. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void fs_seq_write_end(int64_t *seq) {
    int64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    /* Release: every data store happens-before the even value. */
    __atomic_store_n(seq, s + 1, __ATOMIC_RELEASE);
}

/* Waits (spinning) until the sequence is even and returns it. */
static inline int64_t fs_seq_read_begin(const int64_t *seq) {
    int64_t s;
    for (;;) {
        s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if ((s & 1) == 0) return s;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* Non-blocking variant: returns the sequence, odd if a write is in progress. */
static inline int64_t fs_seq_read_peek(const int64_t *seq) {
    return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
}

/* Nonzero when the data read since fs_seq_read_begin may be torn. */
static inline int fs_seq_read_retry(const int64_t *seq, int64_t start) {
    /* Acquire fence: the data loads complete before the re-read. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(seq, __ATOMIC_RELAXED) != start;
}

static inline int64_t fs_atomic_load_i64(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void fs_atomic_store_i64(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Prefetch for reading, kept in all cache levels: batch lookups issue it a few
 * keys ahead so several cache misses overlap. */
static inline void fs_prefetch(const void *p) {
    __builtin_prefetch(p, 0, 3);
}

#endif /* FSCORE_SEQLOCK_H */

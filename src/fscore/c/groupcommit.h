/* WAL group commit with overlapping fsyncs (the engine behind fscore.wal.Wal).
 *
 * Appenders encode records into a shared buffer under one pthread mutex and
 * then wait on a condvar, all without the GIL. Each waiter drives the log
 * forward itself when nobody else is doing the step it needs:
 *
 *   writer  (at most one)      takes every record encoded so far and pwrites it
 *                              to the current segment (rolling segments as
 *                              needed); then written_lsn covers it.
 *   syncer  (up to max_syncers) fdatasyncs written records through an fd of
 *                              its own; success advances durable_lsn.
 *
 * While one fsync is in flight the next writer can write and start the next
 * fsync: the kernel merges concurrent flushes, so syncs overlap instead of
 * queueing behind each other.
 *
 * Safety (fsyncgate). Linux reports a writeback error once per open file
 * description (an errseq cursor per struct file). So every concurrent syncer
 * uses its own fd, all opened when the segment is created (before any record
 * of it is written), and each fd is used by one syncer at a time: each cursor
 * sees every writeback error on the segment since then. A record is
 * acknowledged only when an fsync that *started after its write completed*
 * returned success while the log was not poisoned; that moves durable_lsn, a
 * watermark, so acknowledgements happen in LSN order. Any fsync error poisons
 * the log under the mutex: from then on durable_lsn never moves, every waiter
 * not yet acknowledged fails, and nothing is retried. A write error poisons it
 * too.
 *
 * All I/O happens with the mutex released. The struct is owned by one Wal; the
 * only callback is sync_fn (which may take the GIL: never hold the mutex
 * across it, and we never do). */
#ifndef FSCORE_GROUPCOMMIT_H
#define FSCORE_GROUPCOMMIT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define FS_GC_MAX_SYNCERS 16

/* Return codes (negative); 0 is success. */
#define FS_GC_OK 0
#define FS_GC_EPOISON_FSYNC (-1) /* an fsync failed: poisoned */
#define FS_GC_EPOISON_WRITE (-2) /* a write/ftruncate/segment creation failed: poisoned */
#define FS_GC_ECLOSED (-3)
#define FS_GC_ENOMEM (-4)
#define FS_GC_EINVAL (-5)

/* fsync hook: returns 0 or an errno. NULL means fdatasync (EINTR retried). */
typedef int (*fs_gc_sync_fn)(void *ctx, int fd);

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* double buffer: appenders encode into buf[cur] while the writer writes the other */
    uint8_t *buf[2];
    size_t cap[2], len[2];
    int cur;
    uint64_t next_lsn;          /* LSN the next encoded record gets */
    uint64_t written_lsn;       /* every record <= this has been written to the OS */
    uint64_t durable_lsn;       /* every record <= this is fsynced (acknowledgeable) */
    uint64_t sync_started_upto; /* highest target of an fsync started (in flight or done) */
    int writer_active;
    int syncs_in_flight;
    int rolling;                /* a segment roll is waiting for / doing its work */
    int closed;
    int max_syncers;
    unsigned commit_delay_us;   /* a syncer that finds another fsync in flight waits this long for company */
    /* segment (the writer and roll touch wfd/seg_used; pool slots are checked out under mu) */
    char *dir;
    int wfd;
    int pool[FS_GC_MAX_SYNCERS];
    int pool_busy[FS_GC_MAX_SYNCERS];
    uint64_t seg_first;
    size_t seg_used, seg_bytes;
    int preallocate;
    /* poison */
    int poison;                 /* 0 or FS_GC_EPOISON_* */
    int poison_errno;
    const char *poison_what;    /* static string: which step failed */
    uint64_t poison_durable;    /* durable_lsn when it was poisoned */
    uint64_t segments_created;  /* rolls so far (the Python side refreshes its list) */
    /* counters */
    uint64_t n_fsyncs, n_synced_records, n_writes, max_overlap;
    fs_gc_sync_fn sync_fn;
    void *sync_ctx;
} fs_gc;

/* Initialises `gc` for a segment already open as `wfd` (whose records end at
 * seg_used and whose first LSN is seg_first), with next_lsn as the next LSN
 * to hand out. Opens the per-syncer fds on the segment. Returns 0 or an errno. */
int fs_gc_init(fs_gc *gc, const char *dir, int wfd, uint64_t seg_first, size_t seg_used, size_t seg_bytes,
               int preallocate, uint64_t next_lsn, int max_syncers, unsigned commit_delay_us,
               fs_gc_sync_fn sync_fn, void *sync_ctx);

/* Encodes n records (types[i], payloads[i], lens[i]) with consecutive LSNs and
 * waits until they are durable (durable=1) or written to the OS (durable=0),
 * or returns at once (durable=-1: the caller waits later with fs_gc_wait).
 * The caller has validated types (1..255) and sizes. *first_lsn receives the
 * first LSN. Returns FS_GC_OK or a negative FS_GC_E* code. Call without the GIL. */
int fs_gc_append(fs_gc *gc, size_t n, const uint8_t *types, const void *const *payloads, const size_t *lens,
                 int durable, uint64_t *first_lsn);

/* Waits until the record `lsn` (appended earlier) is durable (durable=1) or
 * written to the OS (durable=0), doing the write or an fsync itself when
 * nobody else is. Returns FS_GC_OK or an error code. Call without the GIL. */
int fs_gc_wait(fs_gc *gc, uint64_t lsn, int durable);

/* Waits until everything appended so far is durable. Returns FS_GC_OK or an error code. */
int fs_gc_sync(fs_gc *gc);

/* Flushes (unless poisoned), waits for in-flight work, trims the preallocated
 * tail and fsyncs it, and closes every fd. Idempotent. Returns FS_GC_OK or an
 * error code (the fds are closed either way). */
int fs_gc_close(fs_gc *gc);

/* Closes every fd without flushing (an unclosed Wal being garbage-collected:
 * no thread can be inside it). */
void fs_gc_abandon(fs_gc *gc);

/* Frees buffers and destroys the mutex/condvar (after fs_gc_close). */
void fs_gc_destroy(fs_gc *gc);

/* Consistent snapshot of the watermarks and counters. */
void fs_gc_stats(fs_gc *gc, uint64_t out[8]);

#endif

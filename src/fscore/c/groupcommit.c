#define _GNU_SOURCE
#include "groupcommit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "record.h"

static int raw_fdatasync(int fd) {
    while (fdatasync(fd) != 0) {
        if (errno != EINTR) return errno;
    }
    return 0;
}

static int call_sync(fs_gc *gc, int fd) {
    return gc->sync_fn ? gc->sync_fn(gc->sync_ctx, fd) : raw_fdatasync(fd);
}

static int write_all(int fd, const uint8_t *p, size_t n, size_t off) {
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += w;
        n -= (size_t)w;
        off += (size_t)w;
    }
    return 0;
}

/* mu held */
static void set_poison(fs_gc *gc, int kind, int err, const char *what) {
    if (gc->poison) return;
    gc->poison = kind;
    gc->poison_errno = err;
    gc->poison_what = what;
    gc->poison_durable = gc->durable_lsn;
}

static void close_pool(fs_gc *gc) {
    for (int i = 0; i < FS_GC_MAX_SYNCERS; i++) {
        if (gc->pool[i] >= 0) close(gc->pool[i]);
        gc->pool[i] = -1;
        gc->pool_busy[i] = 0;
    }
}

/* Opens max_syncers fds on the segment `wfd` refers to, before any record of
 * it is written, so each fd's writeback-error cursor predates every record. */
static int open_pool(fs_gc *gc, uint64_t first) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%020llu.wal", gc->dir, (unsigned long long)first) >= (int)sizeof path)
        return ENAMETOOLONG;
    for (int i = 0; i < gc->max_syncers; i++) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            close_pool(gc);
            return e;
        }
        gc->pool[i] = fd;
    }
    return 0;
}

int fs_gc_init(fs_gc *gc, const char *dir, int wfd, uint64_t seg_first, size_t seg_used, size_t seg_bytes,
               int preallocate, uint64_t next_lsn, int max_syncers, unsigned commit_delay_us,
               fs_gc_sync_fn sync_fn, void *sync_ctx) {
    memset(gc, 0, sizeof *gc);
    for (int i = 0; i < FS_GC_MAX_SYNCERS; i++) gc->pool[i] = -1;
    gc->wfd = -1;
    if (max_syncers < 1 || max_syncers > FS_GC_MAX_SYNCERS) return EINVAL;
    gc->dir = strdup(dir);
    if (!gc->dir) return ENOMEM;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&gc->mu, NULL);
    pthread_cond_init(&gc->cv, &ca);
    pthread_condattr_destroy(&ca);
    gc->next_lsn = next_lsn;
    gc->written_lsn = gc->durable_lsn = gc->sync_started_upto = next_lsn - 1;
    gc->max_syncers = max_syncers;
    gc->commit_delay_us = commit_delay_us;
    gc->seg_first = seg_first;
    gc->seg_used = seg_used;
    gc->seg_bytes = seg_bytes;
    gc->preallocate = preallocate;
    gc->sync_fn = sync_fn;
    gc->sync_ctx = sync_ctx;
    int e = open_pool(gc, seg_first);
    if (e) return e;
    gc->wfd = wfd;
    return 0;
}

/* ------------------------------------------------------------------ roll */

/* Called by the writer (mu not held): finishes the current segment (cut to its
 * records, fsynced) and creates the one starting at `first` (preallocated,
 * fsynced, directory fsynced). Waits for in-flight fsyncs first: their fds
 * belong to the old segment. Returns 0 or FS_GC_EPOISON_* (poison set). */
static int roll(fs_gc *gc, uint64_t first) {
    pthread_mutex_lock(&gc->mu);
    gc->rolling = 1;
    while (gc->syncs_in_flight > 0) pthread_cond_wait(&gc->cv, &gc->mu);
    int poisoned = gc->poison;
    pthread_mutex_unlock(&gc->mu);

    int kind = 0, err = 0, fd = -1, dfd = -1;
    const char *what = NULL;
    char path[4096];
    if (poisoned) goto done;
    if (ftruncate(gc->wfd, (off_t)gc->seg_used) != 0) {
        kind = FS_GC_EPOISON_WRITE, err = errno, what = "ftruncate of a finished segment";
        goto done;
    }
    if ((err = call_sync(gc, gc->pool[0] >= 0 ? gc->pool[0] : gc->wfd))) {
        kind = FS_GC_EPOISON_FSYNC, what = "fsync of a finished segment";
        goto done;
    }
    close_pool(gc);
    close(gc->wfd);
    gc->wfd = -1;
    if (snprintf(path, sizeof path, "%s/%020llu.wal", gc->dir, (unsigned long long)first) >= (int)sizeof path) {
        kind = FS_GC_EPOISON_WRITE, err = ENAMETOOLONG, what = "create segment";
        goto done;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        kind = FS_GC_EPOISON_WRITE, err = errno, what = "create segment";
        goto done;
    }
    if (gc->preallocate) {
        int r = posix_fallocate(fd, 0, (off_t)gc->seg_bytes);
        if (r != 0 && r != EOPNOTSUPP && r != EINVAL && r != ENOSYS) {
            kind = FS_GC_EPOISON_WRITE, err = r, what = "preallocate segment";
            goto done;
        }
    }
    if ((err = call_sync(gc, fd))) {
        kind = FS_GC_EPOISON_FSYNC, what = "fsync of a new segment";
        goto done;
    }
    dfd = open(gc->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        kind = FS_GC_EPOISON_WRITE, err = errno, what = "open the WAL directory";
        goto done;
    }
    err = call_sync(gc, dfd);
    close(dfd);
    if (err) {
        kind = FS_GC_EPOISON_FSYNC, what = "fsync of the WAL directory";
        goto done;
    }
    if ((err = open_pool(gc, first))) {
        kind = FS_GC_EPOISON_WRITE, what = "open a new segment";
        goto done;
    }
done:
    pthread_mutex_lock(&gc->mu);
    if (kind) {
        set_poison(gc, kind, err, what);
        if (fd >= 0 && gc->wfd < 0) gc->wfd = fd;  /* closed by fs_gc_close */
    } else if (!poisoned) {
        gc->wfd = fd;
        gc->seg_first = first;
        gc->seg_used = 0;
        gc->segments_created++;
        /* The finished segment was fsynced whole: everything before `first` is durable. */
        if (!gc->poison) {
            if (gc->written_lsn < first - 1) gc->written_lsn = first - 1;
            if (gc->durable_lsn < first - 1) gc->durable_lsn = first - 1;
        }
    }
    gc->rolling = 0;
    int rc = gc->poison;
    pthread_cond_broadcast(&gc->cv);
    pthread_mutex_unlock(&gc->mu);
    return rc;
}

static inline uint32_t payload_length(const uint8_t *rec) {
    return rec[4] | ((uint32_t)rec[5] << 8) | ((uint32_t)rec[6] << 16) | ((uint32_t)rec[7] << 24);
}

/* Writer, mu not held: whole records, rolling at a record boundary when the
 * segment would overflow (a record larger than a segment gets one of its own). */
static int write_batch(fs_gc *gc, const uint8_t *buf, size_t n) {
    size_t pos = 0;
    int e = 0;
    while (pos < n) {
        size_t left = n - pos;
        if (gc->seg_used + left <= gc->seg_bytes) {
            if ((e = write_all(gc->wfd, buf + pos, left, gc->seg_used))) break;
            gc->seg_used += left;
            return 0;
        }
        size_t room = gc->seg_bytes > gc->seg_used ? gc->seg_bytes - gc->seg_used : 0;
        size_t cut = fs_records_fitting(buf + pos, left, room);
        if (cut == 0 && gc->seg_used == 0) cut = fs_records_fitting(buf + pos, left, FS_REC_HEADER + payload_length(buf + pos));
        if (cut) {
            if ((e = write_all(gc->wfd, buf + pos, cut, gc->seg_used))) break;
            gc->seg_used += cut;
            pos += cut;
        }
        if (pos < n) {
            int rc = roll(gc, fs_record_lsn(buf + pos));
            if (rc) return rc;
        }
    }
    if (!e) return 0;
    pthread_mutex_lock(&gc->mu);
    set_poison(gc, FS_GC_EPOISON_WRITE, e, "write to a segment");
    pthread_mutex_unlock(&gc->mu);
    return FS_GC_EPOISON_WRITE;
}

/* ---------------------------------------------------------- roles (mu held) */

static void do_write(fs_gc *gc) {
    int w = gc->cur;
    size_t n = gc->len[w];
    uint64_t upto = gc->next_lsn - 1;
    gc->writer_active = 1;
    gc->cur = 1 - w;
    gc->len[gc->cur] = 0;
    pthread_mutex_unlock(&gc->mu);
    int rc = n ? write_batch(gc, gc->buf[w], n) : 0;
    pthread_mutex_lock(&gc->mu);
    gc->writer_active = 0;
    gc->len[w] = 0;
    gc->n_writes++;
    if (rc == 0 && !gc->poison && gc->written_lsn < upto) gc->written_lsn = upto;
    pthread_cond_broadcast(&gc->cv);
}

static void do_sync(fs_gc *gc) {
    uint64_t target = gc->written_lsn;
    int slot = 0;
    while (gc->pool_busy[slot]) slot++;  /* syncs_in_flight < max_syncers: one is free */
    gc->pool_busy[slot] = 1;
    int fd = gc->pool[slot];
    gc->sync_started_upto = target;
    gc->syncs_in_flight++;
    if ((uint64_t)gc->syncs_in_flight > gc->max_overlap) gc->max_overlap = (uint64_t)gc->syncs_in_flight;
    pthread_mutex_unlock(&gc->mu);
    int err = call_sync(gc, fd);
    pthread_mutex_lock(&gc->mu);
    gc->pool_busy[slot] = 0;
    gc->syncs_in_flight--;
    gc->n_fsyncs++;
    if (err) {
        set_poison(gc, FS_GC_EPOISON_FSYNC, err, "fsync");
    } else if (!gc->poison && gc->durable_lsn < target) {
        /* This fsync started after every record <= target was written and
         * succeeded before any failure was seen: they are durable. */
        gc->n_synced_records += target - gc->durable_lsn;
        gc->durable_lsn = target;
    }
    pthread_cond_broadcast(&gc->cv);
}

static void deadline_after(struct timespec *ts, unsigned us) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_nsec += (long)us * 1000;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec++;
    }
}

static int past(const struct timespec *ts) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* mu held: returns once `lsn` is durable (or written), doing the write or an
 * fsync itself when nobody else is. */
static int wait_for(fs_gc *gc, uint64_t lsn, int durable) {
    int delaying = 0;
    struct timespec deadline;
    for (;;) {
        if ((durable ? gc->durable_lsn : gc->written_lsn) >= lsn) return FS_GC_OK;
        if (gc->poison) return gc->poison;
        if (gc->written_lsn < lsn) {
            if (!gc->writer_active && !gc->rolling) do_write(gc);
            else pthread_cond_wait(&gc->cv, &gc->mu);
            continue;
        }
        if (gc->sync_started_upto >= lsn || gc->rolling || gc->syncs_in_flight >= gc->max_syncers) {
            pthread_cond_wait(&gc->cv, &gc->mu);
            continue;
        }
        /* Commit delay: another fsync is in flight, so appenders are active;
         * give them a moment to join this one (PostgreSQL's commit_delay). */
        if (gc->commit_delay_us && gc->syncs_in_flight > 0) {
            if (!delaying) {
                delaying = 1;
                deadline_after(&deadline, gc->commit_delay_us);
            }
            if (!past(&deadline)) {
                pthread_cond_timedwait(&gc->cv, &gc->mu, &deadline);
                continue;
            }
        }
        /* Cheap to include: records encoded since the last write. */
        if (gc->len[gc->cur] && !gc->writer_active) {
            do_write(gc);
            continue;
        }
        do_sync(gc);
        delaying = 0;
    }
}

static int reserve(fs_gc *gc, size_t extra) {
    int c = gc->cur;
    size_t need = gc->len[c] + extra;
    if (need <= gc->cap[c]) return 0;
    size_t cap = gc->cap[c] * 2;
    if (cap < need) cap = need;
    if (cap < 65536) cap = 65536;
    uint8_t *p = realloc(gc->buf[c], cap);
    if (!p) return -1;
    gc->buf[c] = p;
    gc->cap[c] = cap;
    return 0;
}

int fs_gc_append(fs_gc *gc, size_t n, const uint8_t *types, const void *const *payloads, const size_t *lens,
                 int durable, uint64_t *first_lsn) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (types[i] == 0 || lens[i] > FS_REC_MAX_PAYLOAD) return FS_GC_EINVAL;
        total += FS_REC_HEADER + lens[i];
    }
    pthread_mutex_lock(&gc->mu);
    int rc;
    if (gc->closed) {
        rc = FS_GC_ECLOSED;
        goto out;
    }
    if (gc->poison) {
        rc = gc->poison;
        goto out;
    }
    if (reserve(gc, total)) {
        rc = FS_GC_ENOMEM;
        goto out;
    }
    *first_lsn = gc->next_lsn;
    int c = gc->cur;
    for (size_t i = 0; i < n; i++) {
        gc->len[c] += fs_record_encode(gc->buf[c] + gc->len[c], types[i], gc->next_lsn, payloads[i], lens[i]);
        gc->next_lsn++;
    }
    rc = n && durable >= 0 ? wait_for(gc, gc->next_lsn - 1, durable) : FS_GC_OK;
out:
    pthread_mutex_unlock(&gc->mu);
    return rc;
}

int fs_gc_wait(fs_gc *gc, uint64_t lsn, int durable) {
    pthread_mutex_lock(&gc->mu);
    int rc;
    if (lsn >= gc->next_lsn) rc = FS_GC_EINVAL;  /* never appended */
    else if ((durable ? gc->durable_lsn : gc->written_lsn) >= lsn) rc = FS_GC_OK;
    else if (gc->poison) rc = gc->poison;
    else if (gc->closed) rc = FS_GC_ECLOSED;
    else rc = wait_for(gc, lsn, durable);
    pthread_mutex_unlock(&gc->mu);
    return rc;
}

int fs_gc_sync(fs_gc *gc) {
    pthread_mutex_lock(&gc->mu);
    int rc = gc->closed ? FS_GC_ECLOSED : gc->poison ? gc->poison : wait_for(gc, gc->next_lsn - 1, 1);
    pthread_mutex_unlock(&gc->mu);
    return rc;
}

int fs_gc_close(fs_gc *gc) {
    pthread_mutex_lock(&gc->mu);
    if (gc->closed) {
        pthread_mutex_unlock(&gc->mu);
        return FS_GC_OK;
    }
    gc->closed = 1;  /* no new appends; those already encoded are flushed below */
    int rc = gc->poison ? FS_GC_OK : wait_for(gc, gc->next_lsn - 1, 1);
    while (gc->writer_active || gc->syncs_in_flight || gc->rolling) pthread_cond_wait(&gc->cv, &gc->mu);
    int poisoned = gc->poison;
    pthread_mutex_unlock(&gc->mu);
    if (!poisoned && gc->wfd >= 0) {
        if (ftruncate(gc->wfd, (off_t)gc->seg_used) != 0) {
            pthread_mutex_lock(&gc->mu);
            set_poison(gc, FS_GC_EPOISON_WRITE, errno, "ftruncate on close");
            pthread_mutex_unlock(&gc->mu);
            rc = FS_GC_EPOISON_WRITE;
        } else {
            int e = call_sync(gc, gc->pool[0] >= 0 ? gc->pool[0] : gc->wfd);
            if (e) {
                pthread_mutex_lock(&gc->mu);
                set_poison(gc, FS_GC_EPOISON_FSYNC, e, "fsync on close");
                pthread_mutex_unlock(&gc->mu);
                rc = FS_GC_EPOISON_FSYNC;
            }
        }
    }
    close_pool(gc);
    if (gc->wfd >= 0) close(gc->wfd);
    gc->wfd = -1;
    return rc;
}

void fs_gc_abandon(fs_gc *gc) {
    pthread_mutex_lock(&gc->mu);
    gc->closed = 1;
    pthread_mutex_unlock(&gc->mu);
    close_pool(gc);
    if (gc->wfd >= 0) close(gc->wfd);
    gc->wfd = -1;
}

void fs_gc_destroy(fs_gc *gc) {
    free(gc->buf[0]);
    free(gc->buf[1]);
    free(gc->dir);
    gc->buf[0] = gc->buf[1] = NULL;
    gc->dir = NULL;
    pthread_mutex_destroy(&gc->mu);
    pthread_cond_destroy(&gc->cv);
}

void fs_gc_stats(fs_gc *gc, uint64_t out[8]) {
    pthread_mutex_lock(&gc->mu);
    out[0] = gc->next_lsn - 1;
    out[1] = gc->written_lsn;
    out[2] = gc->durable_lsn;
    out[3] = gc->n_fsyncs;
    out[4] = gc->n_synced_records;
    out[5] = gc->n_writes;
    out[6] = gc->max_overlap;
    out[7] = gc->segments_created;
    pthread_mutex_unlock(&gc->mu);
}

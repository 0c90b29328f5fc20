#include "record.h"

#include <string.h>

#include "crc32c.h"

/* Explicit little-endian stores/loads: the on-disk format must not depend on
 * the host, and memcpy-free byte assembly compiles to single moves on x86. */
static inline void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static inline void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t get_u64(const uint8_t *p) { return (uint64_t)get_u32(p) | ((uint64_t)get_u32(p + 4) << 32); }

size_t fs_record_encode(uint8_t *out, uint8_t type, uint64_t lsn, const void *payload, size_t n) {
    if (type == 0 || n > FS_REC_MAX_PAYLOAD) return 0;
    put_u32(out + 4, (uint32_t)n);
    out[8] = type;
    put_u64(out + 9, lsn);
    if (n) memcpy(out + FS_REC_HEADER, payload, n);
    put_u32(out, fs_crc32c(out + 4, FS_REC_HEADER - 4 + n));
    return FS_REC_HEADER + n;
}

fs_rec_status fs_record_decode(const uint8_t *buf, size_t n, size_t off, fs_record *rec) {
    if (off > n) return FS_REC_TORN;
    size_t left = n - off;
    const uint8_t *p = buf + off;
    if (left < FS_REC_HEADER) return fs_all_zero(buf, n, off) ? FS_REC_ZERO : FS_REC_TORN;
    if (fs_all_zero(p, FS_REC_HEADER, 0)) return FS_REC_ZERO;
    uint32_t len = get_u32(p + 4);
    if (len > FS_REC_MAX_PAYLOAD || p[8] == 0) return FS_REC_CORRUPT;
    if ((size_t)len > left - FS_REC_HEADER) return FS_REC_TORN;
    if (fs_crc32c(p + 4, FS_REC_HEADER - 4 + (size_t)len) != get_u32(p)) return FS_REC_CORRUPT;
    rec->lsn = get_u64(p + 9);
    rec->length = len;
    rec->type = p[8];
    rec->payload = off + FS_REC_HEADER;
    rec->next = off + FS_REC_HEADER + len;
    return FS_REC_OK;
}

/* Offset of the first non-zero byte in buf[from, n), or n. */
static size_t first_nonzero(const uint8_t *buf, size_t n, size_t from) {
    size_t i = from;
    while (i < n && (i & 7)) {
        if (buf[i]) return i;
        i++;
    }
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        if (w) break;
        i += 8;
    }
    while (i < n && !buf[i]) i++;
    return i;
}

int fs_all_zero(const uint8_t *buf, size_t n, size_t from) { return from >= n || first_nonzero(buf, n, from) == n; }

size_t fs_record_find_valid(const uint8_t *buf, size_t n, size_t from, uint64_t min_lsn) {
    size_t off = from;
    while (off + FS_REC_HEADER <= n) {
        /* A valid header is never all zero (type != 0), so a record starting at
         * `off` has a non-zero byte within its first 17: skip to 16 bytes
         * before the next non-zero byte. */
        size_t nz = first_nonzero(buf, n, off);
        if (nz == n) break;
        if (nz > off + FS_REC_HEADER - 1) off = nz - (FS_REC_HEADER - 1);
        fs_record rec;
        if (fs_record_decode(buf, n, off, &rec) == FS_REC_OK && rec.lsn > min_lsn) return off;
        off++;
    }
    return (size_t)-1;
}

size_t fs_records_fitting(const uint8_t *buf, size_t n, size_t room) {
    size_t off = 0;
    while (off + FS_REC_HEADER <= n) {
        size_t next = off + FS_REC_HEADER + get_u32(buf + off + 4);
        if (next > n || next > room) break;
        off = next;
    }
    return off;
}

uint64_t fs_record_lsn(const uint8_t *buf) { return get_u64(buf + 9); }

/* WAL record codec: encode one record into a buffer, decode/validate one at an
 * offset, and classify what follows a record that does not decode.
 *
 *   record := crc32c:u32 | length:u32 | type:u8 | lsn:u64 | payload[length]
 *
 * All integers little-endian. `crc32c` covers everything after it (the 13 other
 * header bytes and the payload), so a flipped bit anywhere is caught. Type 0 is
 * reserved: a header of zeros (a preallocated, never-written tail) can never be
 * a valid record. The grammar and recovery rules live in docs/wal.md.
 *
 * Pure functions over caller-owned memory: no allocation, no I/O, no global
 * state, safe to call without the GIL from any thread. */
#ifndef FSCORE_RECORD_H
#define FSCORE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define FS_REC_HEADER 17u
/* Largest payload a record may carry. Keeps `length` far from UINT32_MAX so a
 * garbage length field is rejected before any arithmetic can overflow, and
 * bounds the memory a reader trusts a header to describe. */
#define FS_REC_MAX_PAYLOAD (1u << 30)

typedef enum {
    FS_REC_OK = 0,      /* a whole record with a valid checksum and type */
    FS_REC_TORN = 1,    /* too few bytes left for the header or the payload */
    FS_REC_CORRUPT = 2, /* complete, but checksum/type/length is wrong */
    FS_REC_ZERO = 3     /* the header is all zero bytes: never-written space */
} fs_rec_status;

typedef struct {
    uint64_t lsn;
    uint32_t length;  /* payload bytes */
    uint8_t type;
    size_t payload;   /* offset of the payload in the buffer */
    size_t next;      /* offset just after this record */
} fs_record;

/* Bytes a record with an `n`-byte payload occupies. */
static inline size_t fs_record_size(size_t n) { return FS_REC_HEADER + n; }

/* Writes a record into `out`, which must hold fs_record_size(n) bytes. Returns
 * the bytes written, or 0 when type is 0 or n exceeds FS_REC_MAX_PAYLOAD. */
size_t fs_record_encode(uint8_t *out, uint8_t type, uint64_t lsn, const void *payload, size_t n);

/* Decodes the record starting at buf[off] (off <= n). On FS_REC_OK fills *rec;
 * otherwise *rec is untouched. */
fs_rec_status fs_record_decode(const uint8_t *buf, size_t n, size_t off, fs_record *rec);

/* 1 when every byte of buf[from, n) is zero (an empty range counts). */
int fs_all_zero(const uint8_t *buf, size_t n, size_t from);

/* First offset >= from at which a valid record with lsn > min_lsn starts, or
 * (size_t)-1 if none. Recovery asks this after a record fails to decode: if a
 * valid record follows, the failure is mid-log corruption, not a torn tail.
 * Skips zero runs word-at-a-time so a large preallocated tail costs little. */
size_t fs_record_find_valid(const uint8_t *buf, size_t n, size_t from, uint64_t min_lsn);

/* Bytes of whole records at the start of buf[0, n) that fit in `room` bytes
 * (used to split a batch at a record boundary when a segment fills up). The
 * buffer must hold only records this codec encoded. */
size_t fs_records_fitting(const uint8_t *buf, size_t n, size_t room);

/* LSN of the record encoded at buf (which must hold a whole header). */
uint64_t fs_record_lsn(const uint8_t *buf);

#endif

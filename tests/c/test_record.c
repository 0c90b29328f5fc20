/* WAL record codec: round trip, a known byte layout, every truncation of the
 * last record is TORN, every single-bit flip is caught, a zero tail reads as
 * ZERO, find_valid tells mid-log corruption from a torn tail, and batches split
 * at record boundaries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "record.h"

static int failures;
#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
            failures++;                                               \
        }                                                             \
    } while (0)

static uint8_t buf[1 << 16];

/* Three records (lsn 7, 8, 9) with payloads of 0, 5 and 300 bytes. */
static size_t build_log(size_t ends[3]) {
    uint8_t payload[300];
    for (int i = 0; i < 300; i++) payload[i] = (uint8_t)(i * 7 + 1);
    size_t off = 0;
    off += fs_record_encode(buf + off, 1, 7, NULL, 0);
    ends[0] = off;
    off += fs_record_encode(buf + off, 2, 8, "hello", 5);
    ends[1] = off;
    off += fs_record_encode(buf + off, 200, 9, payload, sizeof payload);
    ends[2] = off;
    return off;
}

static void test_known_layout(void) {
    uint8_t rec[FS_REC_HEADER + 3];
    size_t n = fs_record_encode(rec, 5, 0x0102030405060708ull, "abc", 3);
    CHECK(n == FS_REC_HEADER + 3, "size %zu", n);
    const uint8_t want_hdr[13] = {3, 0, 0, 0, 5, 8, 7, 6, 5, 4, 3, 2, 1};
    CHECK(memcmp(rec + 4, want_hdr, 13) == 0, "header bytes are little-endian length|type|lsn");
    uint32_t crc = fs_crc32c(rec + 4, 16);
    uint8_t want_crc[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    CHECK(memcmp(rec, want_crc, 4) == 0, "crc covers header and payload");
    CHECK(fs_record_encode(rec, 0, 1, "", 0) == 0, "type 0 is reserved");
}

static void test_round_trip(void) {
    size_t ends[3];
    size_t n = build_log(ends);
    fs_record r;
    size_t off = 0;
    uint64_t want_lsn = 7;
    for (int i = 0; i < 3; i++) {
        CHECK(fs_record_decode(buf, n, off, &r) == FS_REC_OK, "record %d", i);
        CHECK(r.lsn == want_lsn++, "lsn %llu", (unsigned long long)r.lsn);
        CHECK(r.next == ends[i], "next %zu", r.next);
        off = r.next;
    }
    CHECK(memcmp(buf + ends[0] + FS_REC_HEADER, "hello", 5) == 0, "payload");
    CHECK(fs_record_decode(buf, n, n, &r) == FS_REC_ZERO, "end of buffer is an empty zero tail");
    CHECK(fs_record_lsn(buf + ends[1]) == 9, "lsn accessor");
}

static void test_truncated_last_record_is_torn(void) {
    size_t ends[3];
    build_log(ends);
    fs_record r;
    for (size_t cut = ends[1] + 1; cut < ends[2]; cut++) {
        fs_rec_status s = fs_record_decode(buf, cut, ends[1], &r);
        CHECK(s == FS_REC_TORN, "cut at %zu gave %d", cut, s);
        CHECK(fs_record_find_valid(buf, cut, ends[1] + 1, 8) == (size_t)-1, "nothing valid after a torn tail (cut %zu)", cut);
    }
}

static void test_zero_tail_reads_as_zero(void) {
    size_t ends[3];
    size_t n = build_log(ends);
    memset(buf + n, 0, 4096);
    fs_record r;
    CHECK(fs_record_decode(buf, n + 4096, n, &r) == FS_REC_ZERO, "preallocated tail");
    CHECK(fs_record_decode(buf, n + 5, n, &r) == FS_REC_ZERO, "short zero tail");
    CHECK(fs_all_zero(buf, n + 4096, n), "all zero");
    CHECK(fs_record_find_valid(buf, n + 4096, n, 0) == (size_t)-1, "no record in zeros");
    /* A record whose payload was never written (header only) is torn, not zero. */
    memset(buf + ends[1] + FS_REC_HEADER, 0, ends[2] - ends[1] - FS_REC_HEADER);
    CHECK(fs_record_decode(buf, ends[2], ends[1], &r) == FS_REC_CORRUPT, "zeroed payload fails the crc");
}

static void test_every_bit_flip_is_detected(void) {
    size_t ends[3];
    size_t n = build_log(ends);
    fs_record r;
    for (size_t byte = ends[0]; byte < ends[1]; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[byte] ^= (uint8_t)(1u << bit);
            fs_rec_status s = fs_record_decode(buf, n, ends[0], &r);
            CHECK(s != FS_REC_OK, "flip byte %zu bit %d went unnoticed", byte, bit);
            /* Mid-log: the next record is still there to be found. */
            CHECK(fs_record_find_valid(buf, n, ends[0] + 1, 7) == ends[1], "next record found after flip at %zu", byte);
            buf[byte] ^= (uint8_t)(1u << bit);
        }
    }
}

static void test_find_valid_respects_min_lsn(void) {
    size_t ends[3];
    size_t n = build_log(ends);
    CHECK(fs_record_find_valid(buf, n, 0, 0) == 0, "first record");
    CHECK(fs_record_find_valid(buf, n, 0, 8) == ends[1], "lsn 9 is the first above 8");
    CHECK(fs_record_find_valid(buf, n, 0, 9) == (size_t)-1, "none above 9");
}

static void test_records_fitting_splits_at_boundaries(void) {
    size_t ends[3];
    size_t n = build_log(ends);
    CHECK(fs_records_fitting(buf, n, 0) == 0, "nothing fits in 0");
    CHECK(fs_records_fitting(buf, n, ends[0]) == ends[0], "exactly one");
    CHECK(fs_records_fitting(buf, n, ends[1] + 10) == ends[1], "two whole records");
    CHECK(fs_records_fitting(buf, n, n) == n, "all");
}

static void test_garbage_never_decodes(void) {
    srand(11);
    fs_record r;
    int ok = 0;
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)rand();
    for (size_t off = 0; off + 64 < sizeof buf; off++) ok += fs_record_decode(buf, sizeof buf, off, &r) == FS_REC_OK;
    CHECK(ok == 0, "%d random offsets decoded", ok);
}

int main(void) {
    test_known_layout();
    test_round_trip();
    test_truncated_last_record_is_torn();
    test_zero_tail_reads_as_zero();
    test_every_bit_flip_is_detected();
    test_find_valid_respects_min_lsn();
    test_records_fitting_splits_at_boundaries();
    test_garbage_never_decodes();
    if (!failures) printf("record ok\n");
    return failures != 0;
}

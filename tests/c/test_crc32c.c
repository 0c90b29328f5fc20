/* CRC-32C against the published check values (RFC 3720 B.4) and the
 * hardware path against the software path on random lengths and offsets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"

static int fail(const char *what, uint32_t got, uint32_t want) {
    fprintf(stderr, "%s: got %08x want %08x\n", what, got, want);
    return 1;
}

int main(void) {
    unsigned char buf[4096];
    int bad = 0;
    if (fs_crc32c("123456789", 9) != 0xE3069283u) bad |= fail("check", fs_crc32c("123456789", 9), 0xE3069283u);
    memset(buf, 0, 32);
    if (fs_crc32c(buf, 32) != 0x8A9136AAu) bad |= fail("zeros", fs_crc32c(buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32);
    if (fs_crc32c(buf, 32) != 0x62A8AB43u) bad |= fail("ones", fs_crc32c(buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++) buf[i] = (unsigned char)i;
    if (fs_crc32c(buf, 32) != 0x46DD794Eu) bad |= fail("incrementing", fs_crc32c(buf, 32), 0x46DD794Eu);
    srand(7);
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)rand();
    for (int t = 0; t < 2000; t++) {
        size_t off = (size_t)rand() % 64, n = (size_t)rand() % (sizeof buf - 64);
        uint32_t a = fs_crc32c(buf + off, n), b = fs_crc32c_extend_sw(0, buf + off, n);
        if (a != b) { bad |= fail("hw vs sw", a, b); break; }
        size_t cut = n ? (size_t)rand() % n : 0; /* extend() over a split equals one pass */
        uint32_t c = fs_crc32c_extend(fs_crc32c(buf + off, cut), buf + off + cut, n - cut);
        if (c != a) { bad |= fail("split", c, a); break; }
    }
    if (!bad) printf("crc32c ok\n");
    return bad;
}

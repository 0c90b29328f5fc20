/* fs_shortfloat: known spellings (Python's repr), the fallback outside its
 * range, and on random doubles in range: the text reads back as the same
 * double and dropping its last digit never does (shortest). The exact match
 * with repr() on many more values is tests/property/test_jsonenc.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shortfloat.h"

static int check(double x, const char *want) {
    char buf[FS_SHORTFLOAT_MAX + 1];
    int n = fs_shortfloat(x, buf);
    if (want == NULL) {
        if (n != -1) {
            buf[n > 0 ? n : 0] = 0;
            fprintf(stderr, "%.17g: want the fallback, got %s\n", x, buf);
            return 1;
        }
        return 0;
    }
    if (n < 0 || (size_t)n != strlen(want) || memcmp(buf, want, (size_t)n) != 0) {
        buf[n > 0 ? n : 0] = 0;
        fprintf(stderr, "%.17g: want %s, got %s (%d)\n", x, want, buf, n);
        return 1;
    }
    return 0;
}

static uint64_t next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int main(void) {
    int bad = 0;
    bad |= check(0.0, "0.0");
    bad |= check(-0.0, "-0.0");
    bad |= check(0.1, "0.1");
    bad |= check(1.5, "1.5");
    bad |= check(2.5, "2.5");
    bad |= check(-57.23, "-57.23");
    bad |= check(1e-4, "0.0001");
    bad |= check(0.30000000000000004, "0.30000000000000004");
    bad |= check(1.0 / 3.0, "0.3333333333333333");
    bad |= check(123456789012345.0, "123456789012345.0");
    bad |= check(9.999e-5, NULL);        /* repr switches to exponent notation */
    bad |= check(562949953421312.0, NULL); /* 2^49 and above */
    bad |= check(INFINITY, NULL);
    bad |= check(3957582610818.84375, NULL); /* two nearest 17-digit texts: repr's own tie rule decides */
    bad |= check(NAN, NULL);
    uint64_t seed = 42;
    char buf[FS_SHORTFLOAT_MAX + 1];
    int checked = 0;
    for (int i = 0; i < 400000 && !bad; i++) {
        uint64_t r = next(&seed);
        double x = ldexp((double)(r >> 11), -53) * pow(10.0, (double)(int)(next(&seed) % 19) - 4.0);
        int n = fs_shortfloat(x, buf);
        if (n < 0)
            continue;
        buf[n] = 0;
        checked++;
        if (strtod(buf, NULL) != x) {
            fprintf(stderr, "%.17g: %s does not read back\n", x, buf);
            bad = 1;
        }
        /* one significant digit fewer never reads back */
        char sig[32];
        int ns = 0;
        for (int k = 0; k < n; k++)
            if (buf[k] >= '0' && buf[k] <= '9' && (ns > 0 || buf[k] != '0'))
                sig[ns++] = buf[k];
        if (n >= 2 && buf[n - 2] == '.' && buf[n - 1] == '0')
            ns--; /* the ".0" of a whole number */
        while (ns > 1 && sig[ns - 1] == '0')
            ns--;
        char shorter[400];
        if (ns > 1) {
            snprintf(shorter, sizeof shorter, "%.*g", ns - 1, x);
            if (strtod(shorter, NULL) == x) {
                fprintf(stderr, "%.17g: %s is not the shortest (%s reads back)\n", x, buf, shorter);
                bad = 1;
            }
        }
    }
    if (checked < 200000) {
        fprintf(stderr, "only %d values took the fast path\n", checked);
        bad = 1;
    }
    return bad;
}

/* See shortfloat.h.
 *
 * Python's repr(x) is the decimal with the fewest significant digits that
 * reads back as x (the nearest such one when there are several), in fixed
 * notation when its decimal exponent is in [-4, 16).
 *
 * For 1e-4 <= |x| < 2^49, with x = m * 2^e (m a 53-bit integer): scale by
 * 10^h so that V = x * 10^h lies in [10^16, 10^17) (h in [2, 20]). Exactly,
 * V = m * 5^h / 2^s with m * 5^h < 2^100. The doubles that read back as x
 * are those within half a gap of x, so at this scale the integers that read
 * back as x form a range [a, b] (never empty: 17 significant digits always
 * suffice), computed exactly from V -/+ 5^h / 2^(s+1) (a quarter gap below a
 * power of two; an end exactly on the edge counts when m is even, as strtod
 * rounds half to even). The shortest text is then the largest k with a
 * multiple of 10^k in [a, b], and of those multiples the one nearest V.
 * An exact tie between two nearest multiples is left to the caller's
 * fallback. Tested against repr() by tests/property/test_jsonenc.py and
 * tests/c/test_shortfloat.c.
 */
#include "shortfloat.h"

#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

static const uint64_t POW5[21] = {
    1ULL, 5ULL, 25ULL, 125ULL, 625ULL, 3125ULL, 15625ULL, 78125ULL, 390625ULL, 1953125ULL,
    9765625ULL, 48828125ULL, 244140625ULL, 1220703125ULL, 6103515625ULL, 30517578125ULL,
    152587890625ULL, 762939453125ULL, 3814697265625ULL, 19073486328125ULL, 95367431640625ULL};

static const uint64_t POW10[20] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL,
    1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL,
    100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
    1000000000000000000ULL, 10000000000000000000ULL};

static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

int fs_shortfloat(double x, char *out)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int neg = (int)(bits >> 63);
    int be = (int)((bits >> 52) & 0x7ff);
    uint64_t frac = bits & ((1ULL << 52) - 1);
    char *p = out;
    if (be == 0 && frac == 0) {
        if (neg)
            *p++ = '-';
        memcpy(p, "0.0", 3);
        return (int)(p - out) + 3;
    }
    double ax = neg ? -x : x;
    if (!(ax >= 1e-4 && ax < 562949953421312.0)) /* [1e-4, 2^49); also NaN, inf, subnormals */
        return -1;
    uint64_t m = frac | (1ULL << 52);
    int e = be - 1075; /* ax = m * 2^e */

    /* e10 = floor(log10(ax)), give or take one at a power of ten (then the
     * range below is checked, and a miss falls back) */
    static const double P10D[15] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7,
                                    1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14};
    int e10;
    if (ax >= 1.0) {
        e10 = 0;
        while (e10 < 14 && ax >= P10D[e10 + 1])
            e10++;
    } else {
        e10 = ax >= 0.1 ? -1 : ax >= 0.01 ? -2 : ax >= 0.001 ? -3 : -4;
    }
    int h = 16 - e10; /* 2..20 */
    int s = -(e + h); /* > 0 over the whole range */
    if (s <= 0 || s > 120)
        return -1;
    u128 v = (u128)m * POW5[h]; /* V = v / 2^s */
    /* the ends, over 2^(s+2): V -/+ half a gap (a quarter gap below a power of two) */
    int S = s + 2;
    u128 mask = ((u128)1 << S) - 1;
    u128 lo_n = (v << 2) - (u128)POW5[h] * (frac == 0 ? 1 : 2);
    u128 hi_n = (v << 2) + (u128)POW5[h] * 2;
    int even = (m & 1) == 0;
    u128 a128 = (lo_n + mask) >> S; /* ceil */
    if ((lo_n & mask) == 0 && !even)
        a128 += 1;
    u128 b128 = hi_n >> S; /* floor */
    if ((hi_n & mask) == 0 && !even)
        b128 -= 1;
    if (a128 > b128 || b128 >= ((u128)1 << 63))
        return -1;
    uint64_t a = (uint64_t)a128, b = (uint64_t)b128;
    uint64_t t = (uint64_t)(v >> s); /* floor(V) */
    /* the largest k with a multiple of 10^k in [a, b]: bk = floor(b / 10^k),
     * tk = floor(t / 10^k), in steps of 8, 4, 2, 1 digits (PERF: divisions
     * by constants compile to multiplications) */
    int k = 0;
    uint64_t bk = b, tk = t;
#define FS_STEP(n, pow)                                       \
    while (k + (n) <= 18 && (bk / (pow)) * POW10[k + (n)] >= a) { \
        bk /= (pow);                                          \
        tk /= (pow);                                          \
        k += (n);                                             \
    }
    FS_STEP(8, 100000000ULL)
    FS_STEP(4, 10000ULL)
    FS_STEP(2, 100ULL)
    FS_STEP(1, 10ULL)
#undef FS_STEP
    /* the multiple of 10^k nearest V, inside [a, b] */
    uint64_t q = tk, r = t - q * POW10[k];
    u128 rem2 = ((u128)r << s) + (v & (((u128)1 << s) - 1)); /* (V mod 10^k) * 2^s */
    u128 half = ((u128)POW10[k] << s) >> 1;
    if (rem2 == half)
        return -1; /* two nearest: leave the choice to the fallback */
    if (rem2 > half)
        q += 1;
    if (q * POW10[k] < a)
        q += 1;
    if (q * POW10[k] > b)
        q -= 1;

    /* q * 10^(k - h): its digits, then the point d digits from the right */
    int d = h - k;
    char digits[24];
    int nd = 0;
    uint64_t c = q;
    while (c >= 100) {
        unsigned pair = (unsigned)(c % 100);
        c /= 100;
        digits[nd++] = DIGITS2[2 * pair + 1];
        digits[nd++] = DIGITS2[2 * pair];
    }
    if (c >= 10) {
        digits[nd++] = DIGITS2[2 * c + 1];
        digits[nd++] = DIGITS2[2 * c];
    } else {
        digits[nd++] = (char)('0' + c);
    }
    if (neg)
        *p++ = '-';
    if (d <= 0) { /* a whole number: its digits, -d zeros, ".0" */
        for (int i = nd - 1; i >= 0; i--)
            *p++ = digits[i];
        for (int i = 0; i < -d; i++)
            *p++ = '0';
        memcpy(p, ".0", 2);
        return (int)(p - out) + 2;
    }
    while (nd <= d) /* at least one digit before the point */
        digits[nd++] = '0';
    for (int i = nd - 1; i >= d; i--)
        *p++ = digits[i];
    *p++ = '.';
    for (int i = d - 1; i >= 0; i--)
        *p++ = digits[i];
    return (int)(p - out);
}

/* See shortfloat.h.
 *
 * Python's repr(x) is the decimal with the fewest significant digits that
 * reads back as x (the nearest such one on a tie), in fixed notation when its
 * decimal exponent is in [-4, 16). For 1e-4 <= |x| < 2^49 that is the fixed
 * notation with the fewest fractional digits d such that some integer c has
 * c / 10^d inside x's rounding interval; c is then the integer nearest
 * x * 10^d. (Below 2^49 an ulp is < 1/8, so fewer fractional digits never
 * tie with one more leading digit.) A d that works keeps working for d + 1,
 * so d is found by bisection.
 *
 * Exact integer arithmetic: x = m * 2^e (m a 53-bit integer), so
 * x * 10^d = m * 5^d * 2^(e + d), with m * 5^d < 2^102 for d <= 21 (|x| >= 1e-4
 * needs at most 21 fractional digits for 17 significant ones). The distance
 * from the candidate to x is compared with half the gap to x's neighbours,
 * exactly; on the interval's edge the candidate reads back as x only when m is
 * even (round-half-even). Two candidates inside and equally near x are left
 * to the caller's fallback. Tested against repr() by tests/property/test_jsonenc.py.
 */
#include "shortfloat.h"

#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

static const uint64_t POW5[22] = {
    1ULL, 5ULL, 25ULL, 125ULL, 625ULL, 3125ULL, 15625ULL, 78125ULL, 390625ULL, 1953125ULL,
    9765625ULL, 48828125ULL, 244140625ULL, 1220703125ULL, 6103515625ULL, 30517578125ULL,
    152587890625ULL, 762939453125ULL, 3814697265625ULL, 19073486328125ULL, 95367431640625ULL,
    476837158203125ULL};

#define MAX_FRACTION_DIGITS 21

/* 1 when the integer nearest x * 10^d, over 10^d, reads back as x; 0 when it
 * does not; -1 on an exact tie between two candidates. *out gets it. */
static int try_digits(uint64_t m, int e, int pow2_boundary, int d, uint64_t *out)
{
    u128 p = (u128)m * POW5[d]; /* x * 10^d = p * 2^(e + d) */
    int sh = e + d;
    if (sh >= 0) { /* an integer: exact */
        *out = (uint64_t)(p << sh);
        return 1;
    }
    int s = -sh; /* x * 10^d = p / 2^s, s <= 66 + 21 */
    if (s >= 120)
        return 0;
    u128 one = (u128)1 << s;
    u128 c = p >> s;
    u128 rem = p & (one - 1);
    u128 half = one >> 1;
    int tie = rem == half;
    int below = 0; /* candidate below x */
    if (rem > half) {
        c += 1;
        rem = one - rem; /* distance, over 2^s */
    } else {
        below = rem != 0;
    }
    *out = (uint64_t)c;
    /* half the gap to the neighbour, scaled by 10^d, over 2^s:
     * 2^(e-1) * 10^d = 5^d * 2^(e + d - 1) = 5^d / 2 over 2^s */
    u128 lim = (u128)POW5[d]; /* compare 2 * dist with 5^d */
    u128 dist2 = rem << 1;
    if (pow2_boundary && below) /* the gap below a power of two is half */
        dist2 <<= 1;
    if (dist2 < lim)
        return tie ? -1 : 1; /* two candidates inside, equally near: let the fallback choose */
    if (dist2 > lim)
        return 0;
    if (tie)
        return -1;
    return (m & 1) == 0; /* on the edge: reads back as x when m is even */
}

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
    int pow2_boundary = frac == 0;
    int lo = 0, hi = MAX_FRACTION_DIGITS;
    uint64_t c = 0;
    /* 17 significant digits always read back: at most 17 - (integer digits) fraction digits */
    static const double P10[17] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8,
                                   1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16};
    int int_digits = 0;
    while (int_digits < 16 && ax >= P10[int_digits])
        int_digits++;
    if (int_digits > 0)
        hi = 17 - int_digits;
    int t = try_digits(m, e, pow2_boundary, hi, &c);
    if (t != 1)
        return -1;
    /* PERF: most values are either short decimals (prices, counts) or need
     * 15-17 significant digits (means, sums of such): look there first */
    for (int d = 0; d < 3 && d < hi; d++) {
        uint64_t cd;
        t = try_digits(m, e, pow2_boundary, d, &cd);
        if (t < 0)
            return -1;
        if (t) {
            hi = d;
            c = cd;
            break;
        }
        lo = d + 1;
    }
    if (hi - 2 > lo) {
        uint64_t cd;
        t = try_digits(m, e, pow2_boundary, hi - 2, &cd);
        if (t < 0)
            return -1;
        if (t) {
            hi -= 2;
            c = cd;
        } else {
            lo = hi - 1;
        }
    }
    while (lo < hi) { /* the smallest d in [lo, hi] that works; hi works */
        int mid = (lo + hi) / 2;
        uint64_t cm;
        t = try_digits(m, e, pow2_boundary, mid, &cm);
        if (t < 0)
            return -1;
        if (t) {
            hi = mid;
            c = cm;
        } else {
            lo = mid + 1;
        }
    }
    int d = hi;
    char digits[24];
    int nd = 0;
    while (c >= 100) { /* two digits per division */
        unsigned q = (unsigned)(c % 100);
        c /= 100;
        digits[nd++] = (char)('0' + q % 10);
        digits[nd++] = (char)('0' + q / 10);
    }
    do {
        digits[nd++] = (char)('0' + c % 10);
        c /= 10;
    } while (c);
    while (nd <= d) /* at least one digit before the point */
        digits[nd++] = '0';
    if (neg)
        *p++ = '-';
    for (int i = nd - 1; i >= d; i--)
        *p++ = digits[i];
    *p++ = '.';
    if (d == 0) {
        *p++ = '0';
    } else {
        for (int i = d - 1; i >= 0; i--)
            *p++ = digits[i];
    }
    return (int)(p - out);
}

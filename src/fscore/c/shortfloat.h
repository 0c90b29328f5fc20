/* Shortest round-trip text of a double, as Python's repr(float) writes it,
 * for the common range (1e-4 <= |x| < 2^49, and zeros), with exact 128-bit
 * integer arithmetic. Returns the length written to out (at most
 * FS_SHORTFLOAT_MAX bytes, no NUL), or -1 when the caller must fall back to
 * a general algorithm (PyOS_double_to_string): outside that range, not
 * finite, or an exact tie between two shortest candidates. */
#ifndef FSCORE_SHORTFLOAT_H
#define FSCORE_SHORTFLOAT_H

#define FS_SHORTFLOAT_MAX 40

int fs_shortfloat(double x, char *out);

#endif

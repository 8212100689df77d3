/* parse.h - strict parsing of numbers from untrusted text (URL paths, query
 * strings, headers), so that an id or a limit is either exactly what the
 * client wrote or a named error: never clamped, truncated or defaulted.
 *
 * Accepted syntax: an optional '-' followed by one or more ASCII digits
 * (leading zeros allowed), and nothing else: no sign '+', no whitespace, no
 * base prefix, no trailing bytes, no empty string.
 */
#ifndef MICA_PARSE_H
#define MICA_PARSE_H

#include <stdint.h>

#include "err.h"

/* Parses |s| (NUL-terminated, borrowed) as a decimal integer that must lie
 * in [|min|, |max|]. On success returns 0 and sets *out; on failure *out is
 * left unchanged and the result is:
 *   MICA_EINVAL  |s| or |out| is NULL, min > max, or |s| is not the syntax
 *                above (empty, "12a", " 1", "+1", "0x10", "-")
 *   MICA_ERANGE  |s| is a well-formed integer outside [min, max], including
 *                one beyond int64_t ("9223372036854775808"). */
int mica_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out) MICA_WUR;

/* Parses a point in time given by an operator (`mica push purge --at`,
 * `mica cloudsync purge --at`, statistics ranges): RFC 3339 in UTC or with
 * an offset ("2026-12-07T16:00:00Z", "2026-12-07T18:00:00.250+02:00") or
 * whole milliseconds since the epoch ("1796659200000"). No time zone
 * database is consulted. Returns 0 and sets *ms, or MICA_EINVAL. */
int mica_parse_time_ms(const char *s, int64_t *ms) MICA_WUR;

#endif

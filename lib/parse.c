/* parse.c - strict decimal integers from untrusted text (see parse.h): the
 * digits are accumulated with an overflow check instead of strtoll(), whose
 * clamping to LLONG_MAX and tolerance of blanks and trailing bytes is what
 * turned out-of-range ids into lookups of the largest id. */
#include "parse.h"

#include <stddef.h>

int mica_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out)
{
	int neg = 0, overflow = 0;
	uint64_t mag = 0;
	/* The magnitude limit: 2^63 for a negative number, 2^63 - 1 otherwise. */
	uint64_t limit;
	const char *p;

	if (!s || !out || min > max)
		return MICA_EINVAL;
	p = s;
	if (*p == '-') {
		neg = 1;
		p++;
	}
	if (*p == '\0')
		return MICA_EINVAL;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return MICA_EINVAL;
		unsigned d = (unsigned)(*p - '0');
		/* Keep reading after an overflow: "99...9x" is malformed, not
		 * out of range. */
		if (overflow || mag > (limit - d) / 10)
			overflow = 1;
		else
			mag = mag * 10 + d;
	}
	if (overflow)
		return MICA_ERANGE;
	int64_t v =
		neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
	if (v < min || v > max)
		return MICA_ERANGE;
	*out = v;
	return 0;
}

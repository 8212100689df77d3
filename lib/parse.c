/* parse.c - strict decimal integers from untrusted text (see parse.h): the
 * digits are accumulated with an overflow check instead of strtoll(), whose
 * clamping to LLONG_MAX and tolerance of blanks and trailing bytes is what
 * turned out-of-range ids into lookups of the largest id. */
#include "parse.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

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

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (Howard Hinnant's days_from_civil), so no time zone is consulted. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	const int64_t era = (y >= 0 ? y : y - 399) / 400;
	const unsigned yoe = (unsigned)(y - era * 400);
	const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return true;
}

int mica_parse_time_ms(const char *s, int64_t *ms)
{
	int y, mo, d, h, mi, sec, frac = 0, oh = 0, om = 0, sign = 0;
	if (!s || !*s)
		return MICA_EINVAL;
	if (strspn(s, "0123456789") == strlen(s))
		return mica_parse_int64(s, 0, INT64_MAX / 2, ms) == 0 ? 0 : MICA_EINVAL;
	/* YYYY-MM-DDTHH:MM:SS */
	if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
	    s[7] != '-' || !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
	    !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
	    !digits(s + 17, 2, &sec))
		return MICA_EINVAL;
	const char *p = s + 19;
	if (*p == '.') {
		int n = 0;
		for (p++; *p >= '0' && *p <= '9'; p++, n++)
			if (n < 3)
				frac = frac * 10 + (*p - '0');
		if (n == 0 || n > 9)
			return MICA_EINVAL;
		for (; n < 3; n++)
			frac *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '+' ? 1 : -1;
		if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 ||
		    om > 59)
			return MICA_EINVAL;
		p += 6;
	} else {
		return MICA_EINVAL;
	}
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (*p || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
	    (mo == 2 && d == 29 && !leap) || h > 23 || mi > 59 || sec > 59)
		return MICA_EINVAL;
	int64_t t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
		    sec - sign * (oh * 3600 + om * 60);
	if (t < 0)
		return MICA_EINVAL;
	*ms = t * 1000 + frac;
	return 0;
}

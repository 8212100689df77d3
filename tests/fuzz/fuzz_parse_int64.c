/* fuzz_parse_int64.c - libFuzzer target for mica_parse_int64(). The first
 * 16 input bytes choose the range (two int64, ordered), the rest is the
 * text. Invariants: an accepted text is exactly the optional '-' and digits,
 * its value lies in the range and is what a wide reference computation gives;
 * a text of that shape is refused only as out of range, and then truly is;
 * anything else is malformed; the output is untouched on failure.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "parse.h"

/* Whether |s| is the accepted syntax: '-'? [0-9]+ and nothing else. */
static int well_formed(const char *s)
{
	if (*s == '-')
		s++;
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* The value of a well-formed |s| in 128 bits, saturated far beyond int64. */
static __int128 wide_value(const char *s)
{
	int neg = *s == '-';
	__int128 v = 0, cap = (__int128)1 << 100;
	for (s += neg; *s; s++)
		if (v < cap)
			v = v * 10 + (*s - '0');
	return neg ? -v : v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int64_t a = 0, b = 0, out = 12345;
	char *s;
	if (size < 16)
		return 0;
	memcpy(&a, data, 8);
	memcpy(&b, data + 8, 8);
	if (a > b) {
		int64_t t = a;
		a = b;
		b = t;
	}
	if (!(s = malloc(size - 16 + 1)))
		return 0;
	memcpy(s, data + 16, size - 16);
	s[size - 16] = '\0'; /* an embedded NUL ends the text, as in C */
	int rc = mica_parse_int64(s, a, b, &out);
	if (!well_formed(s)) {
		CHECK(rc == MICA_EINVAL && out == 12345);
	} else {
		__int128 v = wide_value(s);
		if (v >= a && v <= b) {
			CHECK(rc == 0 && (__int128)out == v);
		} else {
			CHECK(rc == MICA_ERANGE && out == 12345);
		}
	}
	free(s);
	return 0;
}

/* fuzz_recycled_lines.c - the lines of a carrier's recycled-number list
 * (`mica recycled import`) through acct_recycled_line(). The input is split
 * at newlines as the command reads it; each verdict is compared with a plain
 * reference of the documented format, and an accepted line's number and day
 * with the fields they came from. */
#include <stdint.h>
#include <string.h>

#include "account/account.h"
#include "fuzz_check.h"

static int blank(char c)
{
	return c == ' ' || c == '\t';
}

/* [*s, *e) without blanks at either end. */
static void trim(const char **s, const char **e)
{
	while (*s < *e && blank(**s))
		(*s)++;
	while (*e > *s && blank((*e)[-1]))
		(*e)--;
}

static int is_phone(const char *s, size_t n)
{
	if (n < 8 || n > 16 || s[0] != '+' || s[1] == '0')
		return 0;
	for (size_t i = 1; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	return 1;
}

static int is_day(const char *s, size_t n)
{
	if (n != 10)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (i == 4 || i == 7 ? s[i] != '-' : s[i] < '0' || s[i] > '9')
			return 0;
	return 1;
}

/* The format: 1 a record, 0 nothing, -1 refused; the fields on 1. */
static int reference(const char *line, size_t len, const char **f0, size_t *n0, const char **f1,
		     size_t *n1)
{
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len))
		return -1;
	const char *s = line, *e = line + len;
	trim(&s, &e);
	if (s == e || *s == '#')
		return 0;
	const char *comma = memchr(s, ',', (size_t)(e - s));
	if (!comma || memchr(comma + 1, ',', (size_t)(e - comma - 1)))
		return -1;
	const char *a = s, *ae = comma, *b = comma + 1, *be = e;
	trim(&a, &ae);
	trim(&b, &be);
	if (!is_phone(a, (size_t)(ae - a)) || !is_day(b, (size_t)(be - b)))
		return -1;
	*f0 = a, *n0 = (size_t)(ae - a), *f1 = b, *n1 = (size_t)(be - b);
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	while (p <= end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = (size_t)((nl ? nl : end) - p);
		char phone[32], day[11];
		const char *why = NULL, *f0 = NULL, *f1 = NULL;
		size_t n0 = 0, n1 = 0;
		int got = acct_recycled_line(p, len, phone, sizeof(phone), day, &why);
		int want = reference(p, len, &f0, &n0, &f1, &n1);
		CHECK(got == want);
		CHECK((got < 0) == (why != NULL && why[0] != '\0'));
		if (got == 1) {
			CHECK(strlen(phone) == n0 && memcmp(phone, f0, n0) == 0);
			CHECK(strlen(day) == n1 && memcmp(day, f1, n1) == 0);
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	return 0;
}

/* vcard.c - what cloud sync checks of a vCard before it stores one
 * (RFC 6350; vCard 3.0, RFC 2426, as most address books still write):
 * UTF-8, one BEGIN:VCARD ... END:VCARD, a VERSION, and content lines of the
 * shape [group "."] name *(";" param) ":" value after unfolding. It keeps
 * the text as sent (a CardDAV client must get back what it wrote) and only
 * reads the UID. Untrusted input: fuzzed (tests/fuzz/fuzz_cloudsync_vcard.c). */
#include <string.h>
#include <strings.h>

#include "cloudsync/cloudsync.h"
#include "form.h"

static bool name_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-';
}

/* The property name of a content line (group and parameters stripped):
 * its start and length; 0 when the line has no valid name before ':' or
 * ';'. */
static size_t line_name(const char *line, size_t len, const char **name)
{
	size_t i = 0, start = 0;
	while (i < len && name_char(line[i]))
		i++;
	if (i < len && line[i] == '.' && i > 0) { /* a group: item1.TEL */
		start = ++i;
		while (i < len && name_char(line[i]))
			i++;
	}
	if (i == start || i == len || (line[i] != ':' && line[i] != ';'))
		return 0;
	*name = line + start;
	return i - start;
}

static bool is(const char *name, size_t n, const char *want)
{
	return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

/* The value of a content line: after the first ':' outside a quoted
 * parameter value. */
static const char *line_value(const char *line, size_t len, size_t *vlen)
{
	bool quoted = false;
	for (size_t i = 0; i < len; i++) {
		if (line[i] == '"')
			quoted = !quoted;
		else if (line[i] == ':' && !quoted) {
			*vlen = len - i - 1;
			return line + i + 1;
		}
	}
	return NULL;
}

int cs_vcard_check(const char *text, size_t len, char *uid, size_t uid_cap, const char **why)
{
	/* Unfolded, a line is at most the whole card: work line by line on the
	 * folded text, joining continuation lines into |buf|. */
	static const size_t max_line = 64 * 1024;
	char buf[1024];
	size_t pos = 0, nlines = 0;
	bool version = false, ended = false;
	*why = NULL;
	if (uid_cap)
		uid[0] = '\0';
	if (!mica_utf8_valid(text, len) || memchr(text, '\0', len)) {
		*why = "the vCard is not UTF-8 text";
		return MICA_EINVAL;
	}
	while (pos < len) {
		/* One logical line: physical lines joined while the next starts
		 * with a space or tab. Only the first sizeof(buf) bytes are kept
		 * (names, the UID); the rest is checked for length only. */
		size_t n = 0, total = 0;
		for (;;) {
			const char *eol = memchr(text + pos, '\n', len - pos);
			size_t end = eol ? (size_t)(eol - text) : len, l = end - pos;
			if (l > 0 && text[pos + l - 1] == '\r')
				l--;
			size_t copy = l < sizeof(buf) - 1 - n ? l : sizeof(buf) - 1 - n;
			memcpy(buf + n, text + pos, copy);
			n += copy;
			total += l;
			pos = eol ? end + 1 : len;
			if (pos >= len || (text[pos] != ' ' && text[pos] != '\t'))
				break;
			pos++; /* the folding whitespace */
		}
		buf[n] = '\0';
		if (total > max_line) {
			*why = "a vCard line is over 64 KiB";
			return MICA_EINVAL;
		}
		if (total == 0)
			continue; /* blank lines (a final newline) */
		if (ended) {
			*why = "text after END:VCARD (one vCard per resource)";
			return MICA_EINVAL;
		}
		const char *name = NULL;
		size_t nl = line_name(buf, n, &name), vlen = 0;
		const char *value = line_value(buf, n, &vlen);
		if (!nl || !value) {
			*why = "a line is not NAME[;PARAMS]:VALUE";
			return MICA_EINVAL;
		}
		bool begin = is(name, nl, "BEGIN"), end_ = is(name, nl, "END");
		if ((begin || end_) && !(vlen == 5 && strncasecmp(value, "VCARD", 5) == 0)) {
			*why = "BEGIN and END must be VCARD";
			return MICA_EINVAL;
		}
		if (nlines++ == 0 ? !begin : begin) {
			*why = nlines == 1 ? "a vCard starts with BEGIN:VCARD"
					   : "one vCard per resource (a second BEGIN:VCARD)";
			return MICA_EINVAL;
		}
		if (end_) {
			ended = true;
		} else if (is(name, nl, "VERSION")) {
			if (!(vlen == 3 &&
			      (memcmp(value, "3.0", 3) == 0 || memcmp(value, "4.0", 3) == 0))) {
				*why = "VERSION must be 3.0 or 4.0";
				return MICA_EINVAL;
			}
			version = true;
		} else if (is(name, nl, "UID") && uid_cap) {
			size_t k = vlen < uid_cap - 1 ? vlen : uid_cap - 1;
			memcpy(uid, value, k);
			uid[k] = '\0';
		}
	}
	if (!ended) {
		*why = nlines ? "the vCard has no END:VCARD" : "the body is empty";
		return MICA_EINVAL;
	}
	if (!version) {
		*why = "the vCard has no VERSION";
		return MICA_EINVAL;
	}
	return 0;
}

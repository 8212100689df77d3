/* log.c - JSON-lines logger and masking helpers (see log.h). One write(2)
 * per line so lines from several threads never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int mica_log_min_level = MICA_LOG_INFO;

static __thread char request_id[64];
static __thread time_t stamp_sec = -1;
static __thread char stamp[64];

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int mica_log_level_parse(const char *name)
{
	for (int i = 0; i <= MICA_LOG_OFF; i++)
		if (name && strcmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

void mica_log_set_request_id(const char *id)
{
	if (!id) {
		request_id[0] = '\0';
		return;
	}
	snprintf(request_id, sizeof(request_id), "%s", id);
}

const char *mica_log_request_id(void)
{
	return request_id;
}

/* Appends |s| JSON-escaped to buf[*len..cap); truncates silently. */
static void append_escaped(char *buf, size_t *len, size_t cap, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	for (; *s && *len + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			buf[(*len)++] = '\\';
			buf[(*len)++] = (char)c;
		} else if (c == '\n') {
			buf[(*len)++] = '\\';
			buf[(*len)++] = 'n';
		} else if (c < 0x20 || c == 0x7f) {
			*len += (size_t)snprintf(buf + *len, cap - *len, "\\u00%c%c",
						 hex[c >> 4], hex[c & 15]);
		} else {
			buf[(*len)++] = (char)c;
		}
	}
}

void mica__log(int level, const char *file, int line, const char *fmt, ...)
{
	char msg[2048], out[4096];
	struct timeval tv;
	struct tm tm;
	size_t len;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	gettimeofday(&tv, NULL);
	if (tv.tv_sec != stamp_sec) {
		/* Formatting the date dominates a log call; once per second is enough. */
		gmtime_r(&tv.tv_sec, &tm);
		snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec);
		stamp_sec = tv.tv_sec;
	}
	const char *base = strrchr(file, '/');
	base = base ? base + 1 : file;
	if (level < 0 || level > MICA_LOG_ERROR)
		level = MICA_LOG_ERROR;

	len = (size_t)snprintf(out, sizeof(out),
			       "{\"ts\":\"%s.%03dZ\",\"level\":\"%s\",\"src\":\"%s:%d\"", stamp,
			       (int)(tv.tv_usec / 1000), level_names[level], base, line);
	if (request_id[0]) {
		len += (size_t)snprintf(out + len, sizeof(out) - len, ",\"req\":\"");
		append_escaped(out, &len, sizeof(out), request_id);
		out[len++] = '"';
	}
	len += (size_t)snprintf(out + len, sizeof(out) - len, ",\"msg\":\"");
	append_escaped(out, &len, sizeof(out) - 3, msg);
	out[len++] = '"';
	out[len++] = '}';
	out[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, out, len);
	(void)w;
}

static char *masked_all(char *out, size_t cap)
{
	snprintf(out, cap, "***");
	return out;
}

/* Parses a dotted-quad IPv4 address into its four octets. */
static int parse_ipv4(const char *s, unsigned oct[4])
{
	for (int i = 0; i < 4; i++) {
		unsigned v = 0;
		int digits = 0;
		for (; *s >= '0' && *s <= '9' && digits < 3; s++, digits++)
			v = v * 10 + (unsigned)(*s - '0');
		if (!digits || v > 255 || *s != (i < 3 ? '.' : '\0'))
			return -1;
		oct[i] = v;
		s++;
	}
	return 0;
}

char *mica_mask_ip(char *out, size_t cap, const char *ip)
{
	unsigned oct[4];
	if (!ip)
		return masked_all(out, cap);
	if (parse_ipv4(ip, oct) == 0) {
		snprintf(out, cap, "%u.%u.*.*", oct[0], oct[1]);
		return out;
	}
	const char *colon = strchr(ip, ':');
	if (colon) {
		/* Keep the first two hextets of an IPv6 address (the /32). */
		const char *second = strchr(colon + 1, ':');
		size_t keep = second ? (size_t)(second - ip) : (size_t)(colon - ip);
		if (keep > 9)
			return masked_all(out, cap);
		snprintf(out, cap, "%.*s:*", (int)keep, ip);
		return out;
	}
	return masked_all(out, cap);
}

char *mica_mask_phone(char *out, size_t cap, const char *phone)
{
	size_t n = phone ? strlen(phone) : 0;
	if (n < 7 || n > 20)
		return masked_all(out, cap);
	/* Keep the first 3 and last 4 characters, as on the handset's own UI. */
	snprintf(out, cap, "%.3s****%s", phone, phone + n - 4);
	return out;
}

char *mica_mask_email(char *out, size_t cap, const char *email)
{
	const char *at = email ? strrchr(email, '@') : NULL;
	if (!at || at == email || !at[1])
		return masked_all(out, cap);
	snprintf(out, cap, "%c***%s", email[0], at);
	return out;
}

char *mica_mask_id(char *out, size_t cap, const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n < 8)
		return masked_all(out, cap);
	snprintf(out, cap, "%.4s******", id);
	return out;
}

char *mica_mask_card(char *out, size_t cap, const char *pan)
{
	size_t n = pan ? strlen(pan) : 0;
	if (n < 12 || n > 19)
		return masked_all(out, cap);
	snprintf(out, cap, "************%s", pan + n - 4);
	return out;
}

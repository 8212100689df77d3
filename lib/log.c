/* log.c - JSON-lines logger and masking helpers (see log.h). Every write(2)
 * carries whole lines, so lines from several threads never interleave.
 *
 * Buffered lines (the access log: one per request) are appended to one
 * process-wide buffer and written by a flusher thread at most LOG_FLUSH_MS
 * after the first of them, or as soon as the buffer is half full: one
 * write(2) per batch instead of one per request. Every other line first
 * writes out what is buffered, in the same writev(2), so the order of lines
 * is kept; an exit flushes the buffer (atexit). If the flusher cannot be
 * started, buffered lines are written at once like the others. */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LOG_BUF_CAP ((size_t)64 * 1024)
#define LOG_FLUSH_MS 100

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
			*len += (size_t)snprintf(buf + *len, cap - *len, "\\u00%c%c", hex[c >> 4],
						 hex[c & 15]);
		} else {
			buf[(*len)++] = (char)c;
		}
	}
}

/* ---- Buffered lines ------------------------------------------------------ */

static pthread_mutex_t buf_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t buf_cv; /* CLOCK_MONOTONIC; set up with the flusher */
static char buf[LOG_BUF_CAP];
static size_t buf_len;
static pthread_once_t flusher_once = PTHREAD_ONCE_INIT;
static int flusher_running;

/* Writes buf and then |line| (may be NULL) with one writev(2), retrying
 * short writes; empties buf. Called with buf_mu held. Lines that cannot be
 * written (stderr closed or broken) are dropped: logging never fails its
 * caller. */
static void write_out_locked(const char *line, size_t len)
{
	struct iovec iov[2] = {{buf, buf_len}, {(void *)(uintptr_t)line, line ? len : 0}};
	struct iovec *v = iov;
	int n = 2;
	while (n > 0) {
		ssize_t w = writev(STDERR_FILENO, v, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		while (n > 0 && (size_t)w >= v->iov_len) {
			w -= (ssize_t)v->iov_len;
			v++;
			n--;
		}
		if (n > 0) {
			v->iov_base = (char *)v->iov_base + w;
			v->iov_len -= (size_t)w;
		}
	}
	buf_len = 0;
}

static void *flusher_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&buf_mu);
	for (;;) {
		while (buf_len == 0)
			pthread_cond_wait(&buf_cv, &buf_mu);
		struct timespec due;
		clock_gettime(CLOCK_MONOTONIC, &due);
		due.tv_nsec += LOG_FLUSH_MS * 1000000L;
		due.tv_sec += due.tv_nsec / 1000000000L;
		due.tv_nsec %= 1000000000L;
		while (buf_len > 0 && buf_len < LOG_BUF_CAP / 2 &&
		       pthread_cond_timedwait(&buf_cv, &buf_mu, &due) != ETIMEDOUT)
			;
		if (buf_len > 0)
			write_out_locked(NULL, 0);
	}
	return NULL;
}

static void flush_at_exit(void)
{
	pthread_mutex_lock(&buf_mu);
	if (buf_len > 0)
		write_out_locked(NULL, 0);
	pthread_mutex_unlock(&buf_mu);
}

static void flusher_start(void)
{
	pthread_condattr_t ca;
	pthread_attr_t attr;
	sigset_t all, old;
	pthread_t t;

	if (pthread_condattr_init(&ca) != 0)
		return;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int rc = pthread_cond_init(&buf_cv, &ca);
	pthread_condattr_destroy(&ca);
	if (rc != 0 || pthread_attr_init(&attr) != 0)
		return;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	/* Signals stay with the threads that wait for them (the daemons' main). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (atexit(flush_at_exit) == 0 && pthread_create(&t, &attr, flusher_main, NULL) == 0)
		flusher_running = 1;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
}

/* Formats one line into out[cap) and returns its length. */
static size_t format_line(char *out, size_t cap, int level, const char *file, int line,
			  const char *fmt, va_list ap)
{
	char msg[2048];
	struct timeval tv;
	struct tm tm;
	size_t len;

	vsnprintf(msg, sizeof(msg), fmt, ap);

	gettimeofday(&tv, NULL);
	if (tv.tv_sec != stamp_sec) {
		/* Formatting the date dominates a log call; once per second is enough. */
		gmtime_r(&tv.tv_sec, &tm);
		snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		stamp_sec = tv.tv_sec;
	}
	const char *base = strrchr(file, '/');
	base = base ? base + 1 : file;
	if (level < 0 || level > MICA_LOG_ERROR)
		level = MICA_LOG_ERROR;

	len = (size_t)snprintf(out, cap, "{\"ts\":\"%s.%03dZ\",\"level\":\"%s\",\"src\":\"%s:%d\"",
			       stamp, (int)(tv.tv_usec / 1000), level_names[level], base, line);
	if (request_id[0]) {
		len += (size_t)snprintf(out + len, cap - len, ",\"req\":\"");
		append_escaped(out, &len, cap, request_id);
		out[len++] = '"';
	}
	len += (size_t)snprintf(out + len, cap - len, ",\"msg\":\"");
	append_escaped(out, &len, cap - 3, msg);
	out[len++] = '"';
	out[len++] = '}';
	out[len++] = '\n';
	return len;
}

void mica__log(int level, const char *file, int line, const char *fmt, ...)
{
	char out[4096];
	va_list ap;

	va_start(ap, fmt);
	size_t len = format_line(out, sizeof(out), level, file, line, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&buf_mu);
	write_out_locked(out, len);
	pthread_mutex_unlock(&buf_mu);
}

void mica__log_buffered(int level, const char *file, int line, const char *fmt, ...)
{
	char out[4096];
	va_list ap;

	va_start(ap, fmt);
	size_t len = format_line(out, sizeof(out), level, file, line, fmt, ap);
	va_end(ap);
	pthread_once(&flusher_once, flusher_start);
	pthread_mutex_lock(&buf_mu);
	if (!flusher_running || buf_len + len > LOG_BUF_CAP) {
		write_out_locked(out, len);
	} else {
		memcpy(buf + buf_len, out, len);
		buf_len += len;
		/* Wake the flusher to start its clock, or to write a half-full buffer. */
		if (buf_len == len ||
		    (buf_len >= LOG_BUF_CAP / 2 && buf_len - len < LOG_BUF_CAP / 2))
			pthread_cond_signal(&buf_cv);
	}
	pthread_mutex_unlock(&buf_mu);
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

/* log.h - level-first JSON-lines logging to stderr, request ids, and masking
 * helpers for personal data.
 *
 * MICA_LOG(level, fmt, ...) checks the level before evaluating its arguments
 * (as Redis serverLog does), then writes one JSON object per line:
 *   {"ts":"2026-11-22T02:40:31.123Z","level":"info","src":"http.c:88",
 *    "req":"3f9c...","msg":"..."}
 * Secrets must never be passed to a log call; personal identifiers go through
 * the mica_mask_* helpers first. The message is JSON-escaped, so untrusted
 * text cannot forge log lines.
 */
#ifndef MICA_LOG_H
#define MICA_LOG_H

#include <stddef.h>

enum mica_log_level {
	MICA_LOG_DEBUG = 0,
	MICA_LOG_INFO = 1,
	MICA_LOG_WARN = 2,
	MICA_LOG_ERROR = 3,
	MICA_LOG_OFF = 4,
};

extern int mica_log_min_level;

#define MICA_LOG(level, ...)                                                                       \
	do {                                                                                       \
		if ((level) >= mica_log_min_level)                                                 \
			mica__log((level), __FILE__, __LINE__, __VA_ARGS__);                       \
	} while (0)

/* MICA_LOG_BUFFERED: the same line, handed to a flusher thread that writes
 * what has gathered at most 100 ms later (or at once when 32 KiB have), so a
 * line per request (the access log) is not a write(2) per request. Any
 * unbuffered line, and exit(), write out what is buffered first. */
#define MICA_LOG_BUFFERED(level, ...)                                                              \
	do {                                                                                       \
		if ((level) >= mica_log_min_level)                                                 \
			mica__log_buffered((level), __FILE__, __LINE__, __VA_ARGS__);              \
	} while (0)

void mica__log(int level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void mica__log_buffered(int level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Parse "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int mica_log_level_parse(const char *name);

/* Request id carried by every log line this thread writes until it is
 * changed; NULL clears it. The string is copied (at most 63 bytes). */
void mica_log_set_request_id(const char *id);
const char *mica_log_request_id(void);

/* Masking helpers. Each writes a NUL-terminated masked copy of |in| into
 * |out| (capacity |cap|, at least 1) and returns |out|. Inputs that do not
 * look like the expected kind are masked entirely ("***"). */
char *mica_mask_ip(char *out, size_t cap, const char *ip);	 /* 10.1.*.* , 2001:db8:*  */
char *mica_mask_phone(char *out, size_t cap, const char *phone); /* 138****5678 */
char *mica_mask_email(char *out, size_t cap, const char *email); /* a***@example.com */
char *mica_mask_id(char *out, size_t cap, const char *id);	 /* ab12****** */
char *mica_mask_card(char *out, size_t cap, const char *pan);	 /* ************1234 */

#endif

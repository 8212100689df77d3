/* notify.c - the account notifier (see notify.h): argument checks shared by
 * every sender, the development outbox (insert and listing), e-mail over
 * SMTP with libcurl (message composition with RFC 5322 headers, RFC 2047
 * subjects and base64 bodies when needed), and SMS through an HTTPS webhook
 * over a checkout pool of mica_httpc handles.
 */
#include "notify.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "crypto.h"
#include "httpc.h"
#include "log.h"

#define DEFAULT_TIMEOUT_MS 10000
#define EMAIL_MAX 254
#define SMTP_LINE_MAX 998 /* RFC 5322 section 2.1.1, without CRLF */
#define B64_LINE 76
/* Raw bytes per RFC 2047 encoded word, so that every header line holding
 * one stays within the RFC's 76 characters: "Subject: " + "=?UTF-8?B?" + 52
 * base64 + "?=" is 73 characters on the first line, and " " + "=?UTF-8?B?" +
 * 60 base64 + "?=" is 73 on each continuation line. */
#define SUBJECT_FIRST_WORD_BYTES 39
#define SUBJECT_WORD_BYTES 45

enum mode { MODE_OUTBOX = 0, MODE_SMTP, MODE_WEBHOOK };

struct pooled {
	mica_httpc *h;
	struct pooled *next;
};

struct acct_notify {
	enum mode email_mode, sms_mode;
	char *smtp_url, *smtp_from, *smtp_user, *smtp_password;
	const char *from_domain; /* points into smtp_from */
	char *webhook_url, *ca, *cert, *key;
	long timeout_ms;
	mica_httpc_options hopt; /* points at the copies above */
	pthread_mutex_t pool_mu;
	struct pooled *idle;
};

const char *acct_channel_name(enum acct_channel channel)
{
	switch (channel) {
	case ACCT_CHANNEL_EMAIL:
		return "email";
	case ACCT_CHANNEL_SMS:
		return "sms";
	}
	return NULL;
}

/* ---- argument checks ---------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at |s| (|n| bytes left), 0 if
 * malformed (overlong, surrogate, above U+10FFFF, truncated). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	if (s[0] < 0x80)
		return 1;
	size_t len = s[0] >= 0xc2 && s[0] <= 0xdf   ? 2
		     : s[0] >= 0xe0 && s[0] <= 0xef ? 3
		     : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4
						    : 0;
	if (len == 0 || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
	    (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
		return 0;
	return len;
}

/* UTF-8 text of 1..|max| bytes without control characters, except CR, LF
 * and TAB when |multiline|. */
static bool text_ok(const char *text, size_t max, bool multiline)
{
	size_t n = text ? strnlen(text, max + 1) : 0;
	const unsigned char *s = (const unsigned char *)text;
	if (n < 1 || n > max)
		return false;
	for (size_t i = 0; i < n;) {
		size_t l = utf8_seq(s + i, n - i);
		if (l == 0)
			return false;
		if (l == 1 && (s[i] < 0x20 || s[i] == 0x7f) &&
		    !(multiline && (s[i] == '\n' || s[i] == '\r' || s[i] == '\t')))
			return false;
		i += l;
	}
	return true;
}

static bool is_atext(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+/=?^_`{|}~-", c));
}

/* An ASCII addr-spec local@domain: a dot-atom local part of 1..64
 * characters and a domain of LDH labels. Nothing that could end a header or
 * an SMTP command (CR, LF, '<', '>', spaces, quotes) gets through. */
static bool email_ok(const char *addr)
{
	size_t n = addr ? strnlen(addr, EMAIL_MAX + 1) : 0;
	const char *at = n ? strchr(addr, '@') : NULL;
	if (n < 3 || n > EMAIL_MAX || !at || at == addr || at - addr > 64 || !at[1])
		return false;
	for (const char *p = addr; p < at; p++) {
		if (*p == '.' ? (p == addr || p + 1 == at || p[1] == '.') : !is_atext(*p))
			return false;
	}
	size_t label = 0;
	for (const char *p = at + 1;; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > 63 || p[-1] == '-')
				return false;
			if (*p == '\0')
				return true;
			label = 0;
		} else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			   (*p >= '0' && *p <= '9') || (*p == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
}

static bool phone_ok(const char *phone)
{
	const char *p = phone;
	if (!p)
		return false;
	if (*p == '+')
		p++;
	size_t digits = strspn(p, "0123456789");
	return p[digits] == '\0' && digits >= 6 && digits <= 20;
}

static int check_args(enum acct_channel channel, const char *recipient, const char *subject,
		      const char *body)
{
	if (channel == ACCT_CHANNEL_EMAIL) {
		if (!email_ok(recipient) || !subject)
			return MICA_EINVAL;
	} else if (channel == ACCT_CHANNEL_SMS) {
		if (!phone_ok(recipient))
			return MICA_EINVAL;
	} else {
		return MICA_EINVAL;
	}
	if (subject && !text_ok(subject, ACCT_NOTIFY_SUBJECT_MAX, false))
		return MICA_EINVAL;
	return text_ok(body, ACCT_NOTIFY_BODY_MAX, true) ? 0 : MICA_EINVAL;
}

static char *mask_recipient(char *buf, size_t cap, enum acct_channel channel, const char *r)
{
	return channel == ACCT_CHANNEL_EMAIL ? mica_mask_email(buf, cap, r)
					     : mica_mask_phone(buf, cap, r);
}

/* ---- outbox ------------------------------------------------------------------- */

static int outbox_insert(mica_db *db, enum acct_channel channel, const char *recipient,
			 const char *subject, const char *body)
{
	const char *p[4] = {acct_channel_name(channel), recipient, subject, body};
	if (!db)
		return MICA_EINVAL;
	return mica_db_exec(db,
			    "INSERT INTO account.notification (channel, recipient, subject, body)"
			    " VALUES ($1, $2, $3, $4)",
			    4, p, NULL);
}

/* Writes |s| with control characters shown as '?'; with |indent|, each line
 * break (CRLF, CR or LF) starts a new line indented by it. */
static void print_clean(FILE *out, const char *s, const char *indent)
{
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (indent && (c == '\n' || c == '\r')) {
			if (c == '\r' && s[1] == '\n')
				s++;
			fprintf(out, "\n%s", indent);
		} else if ((c < 0x20 && c != '\t') || c == 0x7f) {
			fputc('?', out);
		} else {
			fputc(c, out);
		}
	}
}

int acct_notify_outbox_list(mica_db *db, const char *recipient, int limit, FILE *out, int *count)
{
	char lim[16];
	PGresult *res = NULL;
	if (count)
		*count = 0;
	if (!db || !out || limit < 1 || limit > 10000)
		return MICA_EINVAL;
	snprintf(lim, sizeof(lim), "%d", limit);
	const char *p[2] = {recipient, lim};
	int rc =
		mica_db_exec(db,
			     "SELECT to_char(created_at AT TIME ZONE 'UTC',"
			     " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), channel, recipient, subject, body"
			     " FROM (SELECT * FROM account.notification"
			     "  WHERE $1::text IS NULL OR lower(recipient) = lower($1::text)"
			     "  ORDER BY id DESC LIMIT $2::int) AS newest"
			     " ORDER BY id",
			     2, p, &res);
	if (rc)
		return rc;
	int rows = PQntuples(res);
	for (int i = 0; i < rows; i++) {
		static const char *const label[4] = {
			"time:    ", "channel: ", "to:      ", "subject: "};
		for (int col = 0; col < 4; col++) {
			fputs(label[col], out);
			print_clean(out, mica_db_get(res, i, col), NULL);
			fputc('\n', out);
		}
		fputs("body:\n  ", out);
		print_clean(out, mica_db_get(res, i, 4), "  ");
		fputs("\n\n", out);
	}
	PQclear(res);
	if (ferror(out) || fflush(out) != 0)
		return MICA_EIO;
	if (count)
		*count = rows;
	return 0;
}

/* ---- message composition --------------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const void *data, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n + 1)
			cap *= 2;
		/* Grown by hand (not realloc) so the old copy, which holds the
		 * code being sent, can be wiped. */
		char *np = malloc(cap);
		if (!np) {
			b->oom = true;
			return;
		}
		if (b->p) {
			memcpy(np, b->p, b->len);
			mica_wipe(b->p, b->cap);
			free(b->p);
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		b->oom = true; /* only short, fixed-shape lines are formatted */
	else
		sb_add(b, tmp, (size_t)n);
}

static void sb_free(struct sbuf *b)
{
	if (b->p) {
		mica_wipe(b->p, b->cap);
		free(b->p);
	}
	memset(b, 0, sizeof(*b));
}

/* Base64 of |n| bytes, as is or broken into CRLF-terminated lines of
 * B64_LINE characters. */
static void sb_base64(struct sbuf *b, const void *data, size_t n, bool lines)
{
	char *enc = NULL;
	size_t len = 0;
	if (mica_base64_encode_alloc(data, n, &enc, &len) != 0) {
		b->oom = true;
		return;
	}
	if (!lines) {
		sb_add(b, enc, len);
	} else {
		for (size_t off = 0; off < len; off += B64_LINE) {
			sb_add(b, enc + off, len - off < B64_LINE ? len - off : B64_LINE);
			sb_str(b, "\r\n");
		}
	}
	mica_wipe(enc, len);
	free(enc);
}

/* RFC 5322 date in UTC, independent of the locale. */
static void sb_date(struct sbuf *b, time_t now)
{
	static const char *const day[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const mon[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	gmtime_r(&now, &tm);
	sb_printf(b, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", day[tm.tm_wday % 7],
		  tm.tm_mday, mon[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		  tm.tm_sec);
}

/* Subject header: as is when it is plain ASCII, else RFC 2047 "B" encoded
 * words, each holding whole UTF-8 characters, folded onto continuation
 * lines. */
static void sb_subject(struct sbuf *b, const char *subject)
{
	size_t n = strlen(subject);
	bool plain = strstr(subject, "=?") == NULL;
	for (size_t i = 0; i < n && plain; i++)
		plain = (unsigned char)subject[i] >= 0x20 && (unsigned char)subject[i] < 0x7f;
	sb_str(b, "Subject: ");
	if (plain) {
		sb_str(b, subject);
	} else {
		const unsigned char *s = (const unsigned char *)subject;
		for (size_t start = 0, end = 0; start < n; start = end) {
			size_t max = start ? SUBJECT_WORD_BYTES : SUBJECT_FIRST_WORD_BYTES;
			/* text_ok() validated the UTF-8, so utf8_seq() is > 0. */
			while (end < n && end + utf8_seq(s + end, n - end) - start <= max)
				end += utf8_seq(s + end, n - end);
			sb_str(b, start ? "\r\n =?UTF-8?B?" : "=?UTF-8?B?");
			sb_base64(b, s + start, end - start, false);
			sb_str(b, "?=");
		}
	}
	sb_str(b, "\r\n");
}

/* |body| with every line break as CRLF and a final CRLF. *seven_bit says
 * whether it can travel as 7bit (ASCII, lines of at most SMTP_LINE_MAX). */
static void canonical_text(struct sbuf *b, const char *body, bool *seven_bit)
{
	size_t line = 0;
	*seven_bit = true;
	for (const char *p = body; *p; p++) {
		if (*p == '\r' || *p == '\n') {
			if (*p == '\r' && p[1] == '\n')
				p++;
			sb_str(b, "\r\n");
			line = 0;
			continue;
		}
		if ((unsigned char)*p >= 0x80 || ++line > SMTP_LINE_MAX)
			*seven_bit = false;
		sb_add(b, p, 1);
	}
	if (b->len < 2 || memcmp(b->p + b->len - 2, "\r\n", 2) != 0)
		sb_str(b, "\r\n");
}

/* The whole message, headers and body, into |msg|. The Message-ID's left
 * part is |key| when given (the same message sent again carries the same
 * one), else random. */
static int compose(const acct_notify *n, const char *to, const char *subject, const char *body,
		   const char *key, struct sbuf *msg)
{
	uint8_t rnd[16];
	char id[ACCT_NOTIFY_KEY_MAX + 1];
	struct sbuf text = {0};
	bool seven_bit;
	if (key)
		snprintf(id, sizeof(id), "%s", key);
	else if (mica_random(rnd, sizeof(rnd)) != 0 ||
		 mica_hex_encode(rnd, sizeof(rnd), id, sizeof(id)))
		return MICA_ECRYPTO;
	canonical_text(&text, body, &seven_bit);
	sb_printf(msg, "From: <%s>\r\n", n->smtp_from);
	sb_printf(msg, "To: <%s>\r\n", to);
	sb_subject(msg, subject);
	sb_date(msg, (time_t)mica_clock_now());
	sb_printf(msg, "Message-ID: <%s@%s>\r\n", id, n->from_domain);
	sb_str(msg, "MIME-Version: 1.0\r\n"
		    "Content-Type: text/plain; charset=utf-8\r\n");
	if (seven_bit) {
		sb_str(msg, "Content-Transfer-Encoding: 7bit\r\n\r\n");
		if (!text.oom)
			sb_add(msg, text.p, text.len);
	} else {
		sb_str(msg, "Content-Transfer-Encoding: base64\r\n\r\n");
		if (!text.oom)
			sb_base64(msg, text.p, text.len, true);
	}
	bool oom = text.oom || msg->oom;
	sb_free(&text);
	return oom ? MICA_ENOMEM : 0;
}

/* ---- SMTP ---------------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_global(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct upload {
	const char *p;
	size_t left;
};

static size_t on_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct upload *u = arg;
	size_t n = size * nitems < u->left ? size * nitems : u->left;
	memcpy(buf, u->p, n);
	u->p += n;
	u->left -= n;
	return n;
}

static int map_smtp_error(CURLcode cc)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
		return MICA_ETIMEOUT;
	case CURLE_LOGIN_DENIED:
		return MICA_EPERM;
	case CURLE_USE_SSL_FAILED:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
		return MICA_ETLS;
	case CURLE_OUT_OF_MEMORY:
		return MICA_ENOMEM;
	default:
		return MICA_EIO;
	}
}

static int smtp_send(acct_notify *n, const char *to, const char *subject, const char *body,
		     const char *key)
{
	struct sbuf msg = {0};
	struct curl_slist *rcpt = NULL;
	char from[EMAIL_MAX + 3], rcpt_arg[EMAIL_MAX + 3];
	CURL *h = NULL;
	int rc = compose(n, to, subject, body, key, &msg);
	if (rc)
		goto out;
	pthread_once(&curl_once, curl_global);
	snprintf(from, sizeof(from), "<%s>", n->smtp_from);
	snprintf(rcpt_arg, sizeof(rcpt_arg), "<%s>", to);
	if (!(rcpt = curl_slist_append(NULL, rcpt_arg)) || !(h = curl_easy_init())) {
		rc = MICA_ENOMEM;
		goto out;
	}
	struct upload up = {msg.p, msg.len};
	curl_easy_setopt(h, CURLOPT_URL, n->smtp_url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	curl_easy_setopt(h, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (n->ca)
		curl_easy_setopt(h, CURLOPT_CAINFO, n->ca);
	if (n->smtp_user) {
		curl_easy_setopt(h, CURLOPT_USERNAME, n->smtp_user);
		curl_easy_setopt(h, CURLOPT_PASSWORD, n->smtp_password);
	}
	curl_easy_setopt(h, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
	curl_easy_setopt(h, CURLOPT_READDATA, &up);
	curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)msg.len);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 n->timeout_ms < 5000 ? n->timeout_ms : 5000L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, n->timeout_ms);
	CURLcode cc = curl_easy_perform(h);
	if (cc != CURLE_OK) {
		/* curl's generic text only: its error buffer may quote the
		 * server's reply, which can echo the recipient. */
		MICA_LOG(MICA_LOG_WARN, "notify: smtp failed: %s", curl_easy_strerror(cc));
		rc = map_smtp_error(cc);
	}
out:
	if (h)
		curl_easy_cleanup(h);
	curl_slist_free_all(rcpt);
	sb_free(&msg);
	return rc;
}

/* ---- SMS webhook ----------------------------------------------------------------------- */

static mica_httpc *pool_take(acct_notify *n, int *err)
{
	struct pooled *p;
	mica_httpc *h = NULL;
	pthread_mutex_lock(&n->pool_mu);
	if ((p = n->idle) != NULL)
		n->idle = p->next;
	pthread_mutex_unlock(&n->pool_mu);
	*err = 0;
	if (p) {
		h = p->h;
		free(p);
		return h;
	}
	*err = mica_httpc_new(&h, &n->hopt);
	return h;
}

static void pool_give(acct_notify *n, mica_httpc *h)
{
	struct pooled *p = malloc(sizeof(*p));
	if (!p) {
		mica_httpc_free(h);
		return;
	}
	p->h = h;
	pthread_mutex_lock(&n->pool_mu);
	p->next = n->idle;
	n->idle = p;
	pthread_mutex_unlock(&n->pool_mu);
}

static int webhook_status_error(long status)
{
	if (status == 400 || status == 404 || status == 422)
		return MICA_EINVAL;
	if (status == 401 || status == 403)
		return MICA_EPERM;
	if (status == 429)
		return MICA_ELIMITED;
	return MICA_EHTTP;
}

static int webhook_send(acct_notify *n, const char *to, const char *text)
{
	mica_httpc_resp r = {0};
	json_t *o = json_pack("{s:s,s:s}", "to", to, "text", text);
	char *req = o ? json_dumps(o, JSON_COMPACT) : NULL;
	int rc;
	json_decref(o);
	if (!req)
		return MICA_ENOMEM;
	mica_httpc *h = pool_take(n, &rc);
	if (h) {
		rc = mica_httpc_request(h, "POST", n->webhook_url, req, strlen(req), 0, &r);
		pool_give(n, h);
	}
	mica_wipe(req, strlen(req));
	free(req);
	if (rc == 0 && (r.status < 200 || r.status > 299)) {
		MICA_LOG(MICA_LOG_WARN, "notify: sms webhook answered HTTP %ld", r.status);
		rc = webhook_status_error(r.status);
	}
	mica_httpc_resp_cleanup(&r);
	return rc;
}

/* ---- lifecycle and sending ---------------------------------------------------------------- */

void acct_notify_free(acct_notify *n)
{
	if (!n)
		return;
	while (n->idle) {
		struct pooled *p = n->idle;
		n->idle = p->next;
		mica_httpc_free(p->h);
		free(p);
	}
	pthread_mutex_destroy(&n->pool_mu);
	if (n->smtp_password) {
		mica_wipe(n->smtp_password, strlen(n->smtp_password));
		free(n->smtp_password);
	}
	free(n->smtp_url);
	free(n->smtp_from);
	free(n->smtp_user);
	free(n->webhook_url);
	free(n->ca);
	free(n->cert);
	free(n->key);
	free(n);
}

static bool set(const char *s)
{
	return s && *s;
}

/* Copies |src| (NULL or "" stay NULL) into *dst; false when out of memory. */
static bool dup_opt(char **dst, const char *src)
{
	*dst = NULL;
	return !set(src) || (*dst = strdup(src)) != NULL;
}

static int parse_mode(const char *s, enum mode other, const char *other_name, enum mode *out)
{
	if (!set(s) || strcmp(s, "outbox") == 0)
		*out = MODE_OUTBOX;
	else if (strcmp(s, other_name) == 0)
		*out = other;
	else
		return MICA_ECONFIG;
	return 0;
}

static int config_error(const char *what)
{
	MICA_LOG(MICA_LOG_ERROR, "notify: configuration: %s", what);
	return MICA_ECONFIG;
}

static int check_config(const acct_notify_config *c, enum mode *email, enum mode *sms)
{
	if (parse_mode(c->email_mode, MODE_SMTP, "smtp", email))
		return config_error("email_mode must be outbox or smtp");
	if (parse_mode(c->sms_mode, MODE_WEBHOOK, "webhook", sms))
		return config_error("sms_mode must be outbox or webhook");
	if (c->timeout_ms < 0)
		return config_error("timeout must not be negative");
	if (set(c->cert_file) != set(c->key_file))
		return config_error("cert_file and key_file go together");
	if (*email == MODE_SMTP) {
		if (!set(c->smtp_url) || (strncmp(c->smtp_url, "smtp://", 7) != 0 &&
					  strncmp(c->smtp_url, "smtps://", 8) != 0))
			return config_error("smtp_url must start with smtp:// or smtps://");
		if (!email_ok(c->smtp_from))
			return config_error(
				"smtp_from must be an address like no-reply@example.com");
		if (set(c->smtp_user) && !set(c->smtp_password))
			return config_error("smtp_user needs smtp_password");
	}
	if (*sms == MODE_WEBHOOK) {
		if (!set(c->sms_webhook_url) || strncmp(c->sms_webhook_url, "https://", 8) != 0)
			return config_error("sms_webhook_url must start with https://");
		if (!set(c->ca_file))
			return config_error("the sms webhook needs ca_file");
	}
	return 0;
}

int acct_notify_new(acct_notify **out, const acct_notify_config *cfg)
{
	acct_notify *n;
	enum mode email, sms;
	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!cfg)
		return MICA_EINVAL;
	int rc = check_config(cfg, &email, &sms);
	if (rc)
		return rc;
	if (!(n = calloc(1, sizeof(*n))))
		return MICA_ENOMEM;
	if (pthread_mutex_init(&n->pool_mu, NULL) != 0) {
		free(n);
		return MICA_ENOMEM;
	}
	n->email_mode = email;
	n->sms_mode = sms;
	n->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
	if (!dup_opt(&n->smtp_url, cfg->smtp_url) || !dup_opt(&n->smtp_from, cfg->smtp_from) ||
	    !dup_opt(&n->smtp_user, cfg->smtp_user) ||
	    !dup_opt(&n->smtp_password, cfg->smtp_password) ||
	    !dup_opt(&n->webhook_url, cfg->sms_webhook_url) || !dup_opt(&n->ca, cfg->ca_file) ||
	    !dup_opt(&n->cert, cfg->cert_file) || !dup_opt(&n->key, cfg->key_file)) {
		acct_notify_free(n);
		return MICA_ENOMEM;
	}
	const char *at = n->smtp_from ? strchr(n->smtp_from, '@') : NULL;
	n->from_domain = at ? at + 1 : "localhost";
	n->hopt = (mica_httpc_options){
		.ca_file = n->ca,
		.cert_file = n->cert,
		.key_file = n->key,
		.timeout_ms = n->timeout_ms,
		.connect_timeout_ms = n->timeout_ms < 5000 ? n->timeout_ms : 5000,
		.retries = 0,
	};
	*out = n;
	return 0;
}

/* A message key: 1 to ACCT_NOTIFY_KEY_MAX of [A-Za-z0-9.-], which fits a
 * Message-ID's left part as it is. */
static bool key_ok(const char *key)
{
	size_t n = strnlen(key, ACCT_NOTIFY_KEY_MAX + 1);
	if (n < 1 || n > ACCT_NOTIFY_KEY_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((key[i] >= 'a' && key[i] <= 'z') || (key[i] >= 'A' && key[i] <= 'Z') ||
		      (key[i] >= '0' && key[i] <= '9') || key[i] == '.' || key[i] == '-'))
			return false;
	return true;
}

int acct_notify_send(acct_notify *n, mica_db *db, enum acct_channel channel, const char *recipient,
		     const char *subject, const char *body)
{
	return acct_notify_send_keyed(n, db, channel, recipient, subject, body, NULL);
}

int acct_notify_send_keyed(acct_notify *n, mica_db *db, enum acct_channel channel,
			   const char *recipient, const char *subject, const char *body,
			   const char *key)
{
	char masked[64];
	if (!n || (key && !key_ok(key)))
		return MICA_EINVAL;
	int rc = check_args(channel, recipient, subject, body);
	if (rc)
		return rc;
	enum mode mode = channel == ACCT_CHANNEL_EMAIL ? n->email_mode : n->sms_mode;
	const char *how = mode == MODE_OUTBOX ? "outbox" : mode == MODE_SMTP ? "smtp" : "webhook";
	switch (mode) {
	case MODE_OUTBOX:
		rc = outbox_insert(db, channel, recipient, subject, body);
		break;
	case MODE_SMTP:
		rc = smtp_send(n, recipient, subject, body, key);
		break;
	case MODE_WEBHOOK:
		rc = webhook_send(n, recipient, body);
		break;
	}
	mask_recipient(masked, sizeof(masked), channel, recipient);
	if (rc)
		MICA_LOG(MICA_LOG_WARN, "notify: %s to %s via %s failed: %s",
			 acct_channel_name(channel), masked, how, mica_strerror(rc));
	else
		MICA_LOG(MICA_LOG_INFO, "notify: %s to %s via %s", acct_channel_name(channel),
			 masked, how);
	return rc;
}
